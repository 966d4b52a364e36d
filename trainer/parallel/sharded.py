"""Sharded tensors: one logical tensor over the devices of a tensor-parallel group.

A Sharded is either replicated (axis None: every device holds the whole tensor) or split along one
axis (device i holds the i-th of n equal slices). It offers the Tensor operations a transformer uses,
each done shard by shard, and inserts a collective where the math needs one:

  * elementwise ops: operands are aligned (a replicated operand is sliced to each device's part of
    the split axis; broadcast axes need nothing); the result keeps the split;
  * reshape / transpose / permute / slicing / pad move or keep the split axis (never cut across it);
  * a sum or max over the split axis reduces locally, then all-reduces (the result is replicated);
  * x @ w: replicated x by a weight split along its output axis gives an output split on its last
    axis (column parallel); x split on its last axis by a weight split along its input axis gives
    partial sums, all-reduced into a replicated output (row parallel);
  * attention runs per device on a split head axis; `take_rows` on a table split by rows and
    `cross_entropy` on logits split by vocabulary are the vocabulary-parallel forms (no device
    ever holds a full vocabulary of rows or logits).

Gradients need no special rules: the collectives are ordinary differentiable ops of the one-process
graph. The one thing to know: a replicated parameter's copies each receive the gradient of their own
device's uses only; the logical gradient is their sum (`tensor_parallel.sync_replicated_grads`).
"""
from __future__ import annotations
import math
from ..core import Tensor
from ..core import functional as FN
from ..core.kernels.rows import take_rows
from .collectives import all_reduce


def _part_size(size: int, n: int, what: str) -> int:
  if size % n: raise ValueError(f"tensor parallel: {what} of size {size} does not split into {n} equal parts")
  return size // n


class Sharded:
  __hash__ = object.__hash__
  is_sharded = True

  def __init__(self, shards: list[Tensor], axis: int | None):
    self.shards = list(shards)
    self.axis = None if axis is None else axis % shards[0].ndim
    if len({s.device for s in self.shards}) != len(self.shards): raise ValueError("Sharded: one shard per device")

  # ---- making ----
  @staticmethod
  def split(t: Tensor, devices: list[str], axis: int, local: list[Tensor] | None = None) -> Sharded:
    """Device i gets the i-th slice of t along axis, copied there, or cut from local[i] (the same tensor
    already on device i)."""
    axis %= t.ndim
    k = _part_size(t.shape[axis], len(devices), f"axis {axis} of {tuple(t.shape)}")
    def part(x, i): return x.shrink(tuple((i * k, (i + 1) * k) if a == axis else (0, s) for a, s in enumerate(x.shape)))
    return Sharded([part(local[i], i) if local else part(t, i).to(d) for i, d in enumerate(devices)], axis)

  @staticmethod
  def replicate(t: Tensor, devices: list[str], local: list[Tensor] | None = None) -> Sharded:
    return Sharded(list(local) if local else [t.to(d) for d in devices], None)

  def full(self) -> Tensor:
    """The logical tensor on the first device (gathers a split one)."""
    if self.axis is None: return self.shards[0]
    return Tensor.cat([s.to(self.devices[0]) for s in self.shards], self.axis)

  # ---- properties ----
  @property
  def n(self) -> int: return len(self.shards)
  @property
  def devices(self) -> list[str]: return [s.device for s in self.shards]
  @property
  def dtype(self): return self.shards[0].dtype
  @property
  def ndim(self) -> int: return self.shards[0].ndim
  @property
  def shape(self) -> tuple:
    s = list(self.shards[0].shape)
    if self.axis is not None: s[self.axis] *= self.n
    return tuple(s)
  @property
  def requires_grad(self) -> bool: return self.shards[0].requires_grad
  def numel(self) -> int: return math.prod(self.shape)
  def __repr__(self): return f"<Sharded {self.shape} {self.dtype.name} axis={self.axis} on {self.devices}>"

  def _map(self, fn, axis="same") -> Sharded:
    return Sharded([fn(s) for s in self.shards], self.axis if axis == "same" else axis)

  # ---- elementwise ----
  def _pieces(self, x, out_ndim: int, axis: int | None) -> list:
    """x as one operand per device for an elementwise op whose result is split on `axis` (or replicated)."""
    if not isinstance(x, Sharded):
      if isinstance(x, Tensor): raise TypeError("tensor parallel: mix a Tensor with a Sharded only through Sharded.replicate")
      return [x] * self.n
    if x.n != self.n: raise ValueError(f"tensor parallel: {x.n} shards against {self.n}")
    lead = out_ndim - x.ndim
    if x.axis is not None:
      if x.axis + lead != axis: raise ValueError(f"tensor parallel: operands split on different axes ({x.axis + lead} and {axis})")
      return x.shards
    if axis is None or axis < lead or x.shape[axis - lead] == 1: return x.shards
    k = _part_size(x.shape[axis - lead], self.n, "a replicated operand")
    a = axis - lead
    return [s.shrink(tuple((i * k, (i + 1) * k) if j == a else (0, d) for j, d in enumerate(s.shape))) for i, s in enumerate(x.shards)]

  def _elementwise(self, name: str, *args, **kwargs) -> Sharded:
    ops = [self, *args]
    nd = max(o.ndim if isinstance(o, Sharded) else 0 for o in ops)
    axes = {o.axis + nd - o.ndim for o in ops if isinstance(o, Sharded) and o.axis is not None}
    if len(axes) > 1: raise ValueError(f"tensor parallel: {name} on operands split on different axes {sorted(axes)}")
    axis = axes.pop() if axes else None
    per = [self._pieces(o, nd, axis) for o in ops]
    return Sharded([getattr(p[0], name)(*p[1:], **kwargs) for p in zip(*per)], axis)

  # ---- movement ----
  def reshape(self, *shape) -> Sharded:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
    if -1 in shape:
      known = math.prod(d for d in shape if d != -1)
      shape = tuple(self.numel() // known if d == -1 else d for d in shape)
    if self.axis is None: return self._map(lambda s: s.reshape(shape))
    old = self.shape
    prefix = math.prod(old[:self.axis])
    b = next((i for i in range(len(shape) + 1) if math.prod(shape[:i]) == prefix and i < len(shape) and shape[i] != 1), None)
    if b is None or shape[b] % self.n or old[self.axis] % shape[b] and shape[b] % old[self.axis]:
      raise ValueError(f"tensor parallel: reshape {old} -> {shape} would cut across the split axis {self.axis}")
    local = tuple(d // self.n if i == b else d for i, d in enumerate(shape))
    return Sharded([s.reshape(local) for s in self.shards], b)

  def permute(self, *order) -> Sharded:
    order = tuple(order[0]) if len(order) == 1 and isinstance(order[0], (tuple, list)) else tuple(order)
    order = tuple(o % self.ndim for o in order)
    return self._map(lambda s: s.permute(order), None if self.axis is None else order.index(self.axis))

  def transpose(self, a: int = -2, b: int = -1) -> Sharded:
    order = list(range(self.ndim))
    a, b = a % self.ndim, b % self.ndim
    order[a], order[b] = order[b], order[a]
    return self.permute(order)

  @property
  def T(self) -> Sharded: return self.transpose(0, 1)

  def _keeps_split(self, arg, what):
    if self.axis is not None and tuple(arg[self.axis]) not in ((0, 0), (0, self.shape[self.axis])):
      raise ValueError(f"tensor parallel: {what} along the split axis {self.axis}")

  def pad(self, arg, value=0.0) -> Sharded:
    self._keeps_split(arg, "pad")
    return self._map(lambda s: s.pad(arg, value))

  def shrink(self, arg) -> Sharded:
    self._keeps_split(arg, "shrink")
    arg = list(arg)
    if self.axis is not None: arg[self.axis] = (0, self.shards[0].shape[self.axis])
    return self._map(lambda s: s.shrink(tuple(arg)))

  def __getitem__(self, idx) -> Sharded:
    if self.axis is None: return self._map(lambda s: s[idx])
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is not Ellipsis and not isinstance(i, slice) for i in idx) or sum(i is Ellipsis for i in idx) > 1:
      raise ValueError("tensor parallel: index a split tensor with slices (and one Ellipsis) only")
    full = list(idx)
    if Ellipsis in full:
      e = full.index(Ellipsis)
      full[e:e + 1] = [slice(None)] * (self.ndim - len(idx) + 1)
    full += [slice(None)] * (self.ndim - len(full))
    if full[self.axis] != slice(None): raise ValueError(f"tensor parallel: slicing the split axis {self.axis}")
    return self._map(lambda s: s[tuple(full)])

  def unsqueeze(self, dim: int) -> Sharded:
    dim = dim % (self.ndim + 1)
    return self._map(lambda s: s.unsqueeze(dim), None if self.axis is None else self.axis + (dim <= self.axis))

  def to(self, device) -> Tensor:
    if self.axis is not None: raise ValueError("tensor parallel: .to() of a split tensor; use full()")
    return self.shards[0].to(device)

  # ---- reductions ----
  def _reduce(self, name: str, dim=None, keepdim=False) -> Sharded:
    axes = tuple(range(self.ndim)) if dim is None else tuple(a % self.ndim for a in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    if self.axis is None or self.axis not in axes:
      new_axis = None if self.axis is None else (self.axis if keepdim else self.axis - sum(a < self.axis for a in axes))
      return self._map(lambda s: getattr(s, name)(axes, keepdim=keepdim), new_axis)
    local = [getattr(s, "amax" if name == "amax" else "sum")(axes, keepdim=keepdim) for s in self.shards]
    out = all_reduce(local, "max" if name == "amax" else "sum")
    if name == "mean": out = [o * (1.0 / math.prod(self.shape[a] for a in axes)) for o in out]
    return Sharded(out, None)

  def sum(self, dim=None, keepdim=False): return self._reduce("sum", dim, keepdim)
  def mean(self, dim=None, keepdim=False): return self._reduce("mean", dim, keepdim)
  def amax(self, dim=None, keepdim=False): return self._reduce("amax", dim, keepdim)

  # ---- products ----
  def matmul(self, w: Sharded) -> Sharded:
    xa, wa = self.axis, w.axis
    xk, wk, wn = self.ndim - 1, w.ndim - 2, w.ndim - 1
    if xa == xk and wa == wk:        # row parallel: partial sums over the split inner axis
      return Sharded(all_reduce([a @ b for a, b in zip(self.shards, w.shards)], "sum"), None)
    if xa is None and wa == wn:      # column parallel
      return Sharded([self.shards[i] @ w.shards[i] for i in range(self.n)], max(self.ndim, w.ndim) - 1)
    if wa is None and xa is not None and xa < xk:   # split along a batch or row axis of x
      return Sharded([a @ b for a, b in zip(self.shards, w.shards)], xa + max(0, w.ndim - self.ndim))
    if xa is None and wa is None: return Sharded([a @ b for a, b in zip(self.shards, w.shards)], None)
    raise ValueError(f"tensor parallel: matmul of {self} and {w} is not supported")
  __matmul__ = matmul
  linear = Tensor.linear

  def scaled_dot_product_attention(self, k: Sharded, v: Sharded, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False) -> Sharded:
    head = self.ndim - 3
    for t in (self, k, v):
      if t.axis not in (None, head) or t.axis != self.axis: raise ValueError("tensor parallel: attention needs q, k, v all split on the head axis (or all replicated)")
    if attn_mask is not None: raise ValueError("tensor parallel: attention with a mask is not supported")
    return Sharded([FN.scaled_dot_product_attention(q, kk, vv, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
                    for q, kk, vv in zip(self.shards, k.shards, v.shards)], self.axis)

  def take_rows(self, idx: Sharded) -> Sharded:
    """Vocabulary-parallel lookup: each device reads the rows it holds (others read as zero), summed."""
    if self.axis is None: return Sharded([take_rows(t, i) for t, i in zip(self.shards, idx.shards)], None)
    if self.axis != 0 or idx.axis is not None: raise ValueError("tensor parallel: take_rows needs a table split by rows and replicated indices")
    rows = self.shards[0].shape[0]
    return Sharded(all_reduce([take_rows(t, i - r * rows) for r, (t, i) in enumerate(zip(self.shards, idx.shards))], "sum"), None)

  def cross_entropy(self, target: Sharded, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0) -> Sharded:
    """Vocabulary-parallel cross entropy over (N, C) logits split on the class axis: the max, the sum of
    exponentials and the target's logit are each reduced over the devices; no device sees all logits."""
    if self.axis is None:
      return Sharded([FN.cross_entropy(l, t, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
                      for l, t in zip(self.shards, target.shards)], None)
    FN._reduction(reduction)
    if self.ndim != 2 or self.axis != 1 or label_smoothing or weight is not None:
      raise ValueError("tensor parallel: cross entropy needs (N, C) logits split on the class axis (no label smoothing or class weights)")
    logits = self._map(lambda s: s.float())
    m = logits.amax(-1, keepdim=True)
    m = Sharded([x.detach() for x in m.shards], None)      # any constant works; keep it out of the graph
    lse = (logits - m).exp().sum(-1).log() + m.reshape(*self.shape[:-1])
    C = self.shards[0].shape[-1]
    picked = []
    for r, (l, t) in enumerate(zip(logits.shards, target.shards)):
      hit = (t - r * C).unsqueeze(-1) == Tensor.arange(C, device=l.device).reshape((1,) * t.ndim + (C,))
      picked.append(l.where(hit, 0.0).sum(-1))
    loss = lse - Sharded(all_reduce(picked, "sum"), None)
    keep = target._map(lambda t: t != ignore_index)
    loss = loss.where(keep, 0.0)
    if reduction == "none": return loss
    if reduction == "sum": return loss.sum()
    return loss.sum() / keep._map(lambda k: k.float()).sum()

  def backward(self):
    """Backward from a replicated scalar: its copies are equal, and the graph joins them, so one suffices."""
    if self.axis is not None or self.numel() != 1: raise ValueError("tensor parallel: backward() needs a replicated scalar")
    return self.shards[0].backward()

  def assign_full(self, arr):
    """Overwrite every shard in place from the logical tensor's values (a numpy array)."""
    k = None if self.axis is None else self.shards[0].shape[self.axis]
    for i, s in enumerate(self.shards):
      part = arr if k is None else arr[(slice(None),) * self.axis + (slice(i * k, (i + 1) * k),)]
      s.assign(Tensor(part, device=s.device, dtype=s.dtype)).realize()

  def item(self): return self.to(self.devices[0]).item()
  def numpy(self): return self.full().numpy()


_UNARY = ("float", "_float", "cast", "exp", "log", "sqrt", "rsqrt", "sigmoid", "silu", "relu", "reciprocal", "contiguous", "detach",
          "abs", "tanh", "__neg__")
_BINARY = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "maximum", "minimum",
           "__lt__", "__gt__", "__le__", "__ge__", "__eq__", "__ne__", "where")


def _method(name):
  return lambda self, *a, **k: self._elementwise(name, *a, **k)


for _n in _UNARY + _BINARY: setattr(Sharded, _n, _method(_n))
Sharded.rms_norm = FN.rms_norm
