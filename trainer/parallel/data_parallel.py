"""Data parallelism: one model replica per device of the dp group, each fed its slice of the batch.

A step is `zero_grad(accumulate)`, then per micro-batch the replicas' forward and backward followed by
`micro_batch_done(loss, ...)` (which runs the micro-batch, so its activations are freed before the next
one), then `step()`. When accumulating, each gradient starts as float32 zeros and every micro-batch's
gradient is added to it in float32 as backward makes it.

In `step()` each gradient is averaged over the replicas with a ring all-reduce in `comm_dtype` (the
gradients' own type when None), so every replica applies the same update and the replicas stay
identical. With ZeRO-1 every parameter is cut into dp chunks (ring.bounds of its flattened elements):
replica r keeps the master weights and optimizer state of chunk r of each parameter only. Each
gradient is reduce-scattered (in comm_dtype) instead of all-reduced, each replica updates its chunks,
and an all-gather (in the parameters' type) brings every parameter's new weights back to every replica;
no flat copy of all gradients or weights is ever made.
With tensor parallelism each replica is sharded over its tp group: the replicas' devices of each tp
rank form their own ring with one bucket per device, after each replicated parameter's gradient has
been summed over its tp group (tensor_parallel.sync_replicated_grads).

Across hosts (`hosts`, parallel/hosts.py) the replicas of every host take part: the gradients are averaged over
all of them and ZeRO-1 shards over all of them, by the hierarchical collectives of across_hosts.py (the ring inside
the host, MPI between hosts). Every exchange of a step is begun before the first is awaited, so they overlap.
"""
from __future__ import annotations
import numpy as np
from ..core import Tensor, dtypes, no_grad, precision
from ..nn.module import materialize, _np_of
from ..nn.optim import clip_scale
from .collectives import all_reduce, reduce_scatter, all_gather
from . import across_hosts
from .across_hosts import zero1_bounds
from ..checkpoint import CheckpointError
from .hosts import SingleHost
from .tensor_parallel import param_groups, sync_replicated_grads


class DataParallel:
  """`models`: one replica per dp rank, each a plain model or one sharded over a tensor-parallel group
  (tensor_parallel.shard_model); the replicas' devices of tp rank r form the all-reduce ring of r.
  `make_optimizer` takes (name, tensor) pairs: the model's parameter names with their tensors or ZeRO-1 chunks."""
  def __init__(self, models: list, make_optimizer, zero1: bool = False, clip_norm: float | None = None, comm_dtype=None,
               master_dtype="float32", hosts=None):
    """master_dtype: the type of ZeRO-1's weight chunks (the optimizer's master weights). ZeRO-1 with a single
    replica is plain data parallelism (there is nothing to shard). hosts: the host layer (one host by default)."""
    self.hosts = hosts = hosts or SingleHost()
    zero1 = zero1 and len(models) * hosts.size > 1
    self.models, self.zero1, self.clip_norm = models, zero1, clip_norm
    self.comm_dtype = dtypes.get(comm_dtype) if comm_dtype is not None else None
    self.master_dtype = dtypes.get(master_dtype)
    self.sums = None   # float32 gradient sums over micro-batches (made on the first step that accumulates)
    groups = [param_groups(m) for m in models]
    self.replicated = groups[0][1]
    self.ranks = [[g[0][r] for g in groups] for r in range(len(groups[0][0]))]   # [tp rank][replica] -> tensors of one device
    if zero1 and len(self.ranks) > 1: raise ValueError("ZeRO-1 together with tensor parallelism is not supported: set mesh.zero1: false")
    with no_grad():
      for rank in self.ranks:
        for ps in rank[1:]:             # every replica starts from replica 0's weights
          Tensor.realize_all(*[p.assign(p0.to(p.device)) for p0, p in zip(rank[0], ps)])
    self.params = self.ranks[0]         # tp rank 0's tensors of every replica (all of them without tp)
    self.devices = [ps[0].device for ps in self.params]
    self.sizes = [p.numel() for p in self.params[0]]
    self.names = [n for n, _ in models[0].named_parameters()]   # the optimizers see (name, tensor) pairs
    if not zero1:
      self.opts = [make_optimizer(list(zip(self.names, ps))) for rank in self.ranks for ps in rank]
      return
    self.bounds = [across_hosts.zero1_bounds(n, len(models), hosts.size)[hosts.rank] for n in self.sizes]
    with no_grad():   # replica r's chunk r of every parameter, in the master type, on its device
      self.shards = [[materialize(p.detach().reshape(-1)[b[r][0]:b[r][1]].cast(self.master_dtype), requires_grad=True)
                      for p, b in zip(ps, self.bounds)] for r, ps in enumerate(self.params)]
    self.opts = [make_optimizer(list(zip(self.names, sh))) for sh in self.shards]

  def _grad(self, p):
    """p's gradient as it travels (zeros if it has none): in comm_dtype, or its own float type when that is None
    (bfloat16 moves half the bytes of float32; the mean is taken in float32 and rounded once per hop)."""
    dt = self.comm_dtype or (p.grad.dtype if p.grad is not None and p.grad.dtype.is_float else dtypes.float32)
    return Tensor.zeros(*p.shape, device=p.device, dtype=dt) if p.grad is None else p.grad.cast(dt)

  def _all_params(self):
    return [p for rank in self.ranks for ps in rank for p in ps]

  def zero_grad(self, accumulate: bool = False):
    """Start a step: no gradients, or with accumulate float32 sums set to zero, that backward adds each
    micro-batch's gradients to in place, right after it makes each (core.tensor.backward's leaf rule)."""
    if not accumulate:
      for p in self._all_params(): p.grad = None
      return
    if self.sums is None: self.sums = [materialize(Tensor.zeros(*p.shape, device=p.device), requires_grad=False) for p in self._all_params()]
    for p, s in zip(self._all_params(), self.sums): p.grad = s.assign(Tensor.zeros(*p.shape, device=p.device))

  def micro_batch_done(self, *outputs: Tensor):
    """Run the micro-batch now: realize every gradient and `outputs` (its loss), so nothing of the
    micro-batch's graph (activations, logits) is alive when the next one starts."""
    Tensor.realize_all(*[p.grad for p in self._all_params() if p.grad is not None], *outputs)

  def set_lr(self, lr: float):
    for o in self.opts: o.set_lr(lr)

  def step(self):
    """Average the replicas' gradients and apply the optimizer everywhere (or shard-wise with ZeRO-1)."""
    if self.comm_dtype is not None: precision.note("comm", self.comm_dtype)   # what gradients are reduced in (also at dp=1)
    with no_grad():
      if len(self.ranks) > 1:
        for m in self.models: sync_replicated_grads(m)
      if not self.zero1:
        for rank in self.ranks:   # one all-reduce per parameter: no flattening pass over all gradients
          if self.hosts.size > 1:
            done = across_hosts.exchange([across_hosts.all_reduce([self._grad(ps[i]) for ps in rank], self.hosts, "mean") for i in range(len(rank[0]))])
          elif len(rank) > 1: done = [all_reduce([self._grad(ps[i]) for ps in rank], "mean") for i in range(len(rank[0]))]
          else: continue
          for i, gs in enumerate(done):
            for ps, g in zip(rank, gs): ps[i].grad = g.cast(ps[i].dtype if ps[i].dtype.is_float else dtypes.float32)
        per = len(self.models)   # the optimizer of tp rank r and replica d is opts[r * per + d]
        scales = [self._clip_scales([rank[d] for rank in self.ranks]) if self.clip_norm else [None] * len(self.ranks) for d in range(per)]
        for i, opt in enumerate(self.opts):
          opt.step(grad_scale=scales[i % per][i // per]); opt.zero_grad()
        return
      grads = lambda i: [self._grad(ps[i]).reshape(-1) for ps in self.params]
      if self.hosts.size > 1: chunks = across_hosts.exchange([across_hosts.reduce_scatter(grads(i), self.hosts, "mean") for i in range(len(self.sizes))])
      else: chunks = [reduce_scatter(grads(i), "mean") for i in range(len(self.sizes))]
      if self.clip_norm:   # the global norm over every chunk of every replica
        sq = [sum((c[r].float().square().sum() for c in chunks), Tensor(0.0, device=d)).reshape(1) for r, d in enumerate(self.devices)]
        total = across_hosts.exchange([across_hosts.all_reduce(sq, self.hosts, "sum")])[0] if self.hosts.size > 1 else all_reduce(sq, "sum")
        coef = [(self.clip_norm / (s.sqrt() + 1e-6)).minimum(1.0) for s in total]
      for r, opt in enumerate(self.opts):
        for shard, c in zip(self.shards[r], chunks): shard.grad = c[r]
        opt.step(grad_scale=coef[r] if self.clip_norm else None)
      pieces = lambda i: [self.shards[r][i].detach().cast(self.params[0][i].dtype) for r in range(len(self.models))]
      if self.hosts.size > 1: fulls = across_hosts.exchange([across_hosts.all_gather(pieces(i), self.hosts, self.sizes[i]) for i in range(len(self.sizes))])
      else: fulls = [all_gather(pieces(i), (self.sizes[i],)) for i in range(len(self.sizes))]
      for i, full in enumerate(fulls):
        new = [ps[i].assign(f.reshape(ps[i].shape)) for ps, f in zip(self.params, full)]
        for ps in self.params: ps[i].grad = None
        Tensor.realize_all(*new)

  def _clip_scales(self, groups: list[list[Tensor]]) -> list[Tensor]:
    """Global-norm clipping's coefficient for one replica whose parameters are spread over a tensor-parallel
    group (each replicated parameter counted once), on each rank's device: the optimizers scale the gradients."""
    if len(groups) == 1: return [clip_scale(groups[0], self.clip_norm)[1]]
    sq = [sum((p.grad.float().square().sum() for p, rep in zip(ps, self.replicated) if r == 0 or not rep), Tensor(0.0, device=ps[0].device))
          for r, ps in enumerate(groups)]
    total = sum(s.to(groups[0][0].device) for s in sq[1:]) + sq[0]
    coef = (self.clip_norm / (total.sqrt() + 1e-6)).minimum(1.0)
    return [coef.to(ps[0].device) for ps in groups]

  # ---- checkpoints ----
  def layout(self) -> dict:
    """What the optimizer state's keys mean: hosts, replicas per host, tensor-parallel ranks, ZeRO-1."""
    return {"hosts": self.hosts.size, "dp": len(self.models), "tp": len(self.ranks), "zero1": self.zero1}

  def _first(self) -> int: return self.hosts.rank * len(self.models)   # this host's first global replica

  def state_dict(self) -> dict:
    """The optimizer state this host holds: all of it without ZeRO-1 (every host holds the same), else the shards of
    its replicas, keyed by global replica: rank<g>.<name>.<slot>, rank<g>.<name>.shard (the master weights)."""
    if not self.zero1:
      if len(self.ranks) == 1: return dict(self.opts[0].state_dict())
      per = len(self.models)   # the optimizers of tp rank r start at r * per
      return {f"tp{r}.{k}": v for r in range(len(self.ranks)) for k, v in self.opts[r * per].state_dict().items()}
    g0 = self._first()
    return {f"rank{g0 + r}.{k}": v for r, o in enumerate(self.opts) for k, v in o.state_dict().items()} | \
           {f"rank{g0 + r}.{n}.shard": s for r, sh in enumerate(self.shards) for n, s in zip(self.names, sh)}

  def own(self, sd: dict) -> dict:
    """The entries of a checkpoint's optimizer state (written in this layout) that this host holds."""
    if not self.zero1: return sd
    mine = tuple(f"rank{self._first() + r}." for r in range(len(self.models)))
    return {k: v for k, v in sd.items() if k.startswith(mine)}

  def load_state_dict(self, sd: dict, layout: dict | None = None):
    """Load optimizer state that a run of `layout` wrote (every host's part: on a shared file system each host reads
    them all). Another number of hosts or replicas, or ZeRO-1 switched, is resharded through the full tensors;
    tensor parallelism cannot be: the checkpoint record refuses another mesh.tp first."""
    layout = layout or self.layout()
    if layout["zero1"] or self.zero1:
      if layout != self.layout(): return self._load_full(_full_state(sd, layout, self.names, self.sizes, self._weights))
    if not self.zero1:
      per = len(self.models)
      for i, o in enumerate(self.opts):
        prefix = f"tp{i // per}." if len(self.ranks) > 1 else ""
        o.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
      return
    g0 = self._first()
    for r, o in enumerate(self.opts):
      o.load_state_dict({k[len(f"rank{g0 + r}."):]: v for k, v in sd.items() if k.startswith(f"rank{g0 + r}.") and not k.endswith(".shard")})
      for n, s in zip(self.names, self.shards[r]):
        arr, _ = _np_of(sd[f"rank{g0 + r}.{n}.shard"])
        s.assign(Tensor(arr, device=s.device, dtype=s.dtype)).realize()

  def _weights(self, i: int) -> np.ndarray:
    """Parameter i's values, flat, in the master type (the master weights of a run that kept none apart)."""
    arr, _ = _np_of(self.params[0][i].detach().cast(self.master_dtype))
    return arr.reshape(-1)

  def _load_full(self, full: dict):
    """Cut the full optimizer state (_full_state) into this layout's pieces."""
    if not self.zero1:
      for o in self.opts:
        mine = o.state_dict()
        o.load_state_dict({k: full[k].reshape(mine[k].shape) for k in mine})
      return
    for r, o in enumerate(self.opts):
      piece = lambda k, i: full[k][self.bounds[i][r][0]:self.bounds[i][r][1]]
      o.load_state_dict({k: full[k] if k in ("lr", "step") else piece(k, self.names.index(k.rsplit(".", 1)[0])) for k in o.state_dict()})
      for i, (n, s) in enumerate(zip(self.names, self.shards[r])):
        s.assign(Tensor(piece(f"{n}.master", i), device=s.device, dtype=s.dtype)).realize()


def _full_state(sd: dict, layout: dict, names: list[str], sizes: list[int], weights) -> dict:
  """The optimizer state of a checkpoint written in `layout` as full flat arrays: lr, step, <name>.<slot> and
  <name>.master (from `weights(i)` where the run kept no separate master weights)."""
  if layout["tp"] > 1: raise CheckpointError("a checkpoint with tensor parallelism can only continue on the same mesh")
  arr = lambda v: _np_of(v)[0]
  if not layout["zero1"]:
    full = {k: arr(v).reshape(-1) for k, v in sd.items()}
  else:
    full = {"lr": arr(sd["rank0.lr"]), "step": arr(sd["rank0.step"])}
    slots = {k.split(".", 1)[1][len(names[0]) + 1:] for k in sd if k.startswith(f"rank0.{names[0]}.")}
    for i, (n, size) in enumerate(zip(names, sizes)):
      owners = sorted((lo, h * layout["dp"] + d) for h, row in enumerate(zero1_bounds(size, layout["dp"], layout["hosts"])) for d, (lo, _) in enumerate(row))
      for slot in slots:
        full[f"{n}.{'master' if slot == 'shard' else slot}"] = np.concatenate([arr(sd[f"rank{g}.{n}.{slot}"]).reshape(-1) for _, g in owners])
  for i, n in enumerate(names):
    if f"{n}.master" not in full: full[f"{n}.master"] = weights(i)
  return full
