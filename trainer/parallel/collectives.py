"""Collectives over lists of per-device tensors: all-reduce (sum, mean, max), reduce-scatter, all-gather,
broadcast. No NCCL, no MPI.

Each collective is one node of the lazy graph (Op.COLLECTIVE, one output per device) that the scheduler
runs as one item: ring.RingCollective, a ring of chunked, pipelined peer-to-peer copies and local adds
(see ring.py). The JIT records and replays it like a kernel. Gradients: every output's gradient is
copied back to every input's device (the transpose of the collective): an all-reduce's inputs get the
sum of the output gradients, a reduce-scatter's the gathered ones, an all-gather's chunks the sum of
their slices; max sends it to the inputs that hold the maximum.
"""
from __future__ import annotations
from ..core import Tensor
from ..core.lazy import LazyBuffer
from ..core.ops import Op
from .ring import RingCollective, bounds

__all__ = ["all_reduce", "reduce_scatter", "all_gather", "broadcast"]


def _check(xs: list[Tensor], same: bool = True):
  if not xs: raise ValueError("collective over an empty list of tensors")
  if len({x.device for x in xs}) != len(xs): raise ValueError(f"collective needs one tensor per device, got devices {[x.device for x in xs]}")
  if same and len({(x.shape, x.dtype) for x in xs}) != 1:
    raise ValueError(f"collective needs equal shapes and dtypes, got {[(x.shape, x.dtype.name) for x in xs]}")
  if not same and len({x.dtype for x in xs}) != 1: raise ValueError(f"collective needs equal dtypes, got {[x.dtype.name for x in xs]}")


class _OutputGrad:
  """Autograd context of one output of a collective: `backward` maps its gradient to every input."""
  def __init__(self, parents, to_input):
    self.parents, self.to_input = parents, to_input
    self.needs_input_grad = [p.requires_grad for p in parents]

  def backward(self, g: LazyBuffer):
    return tuple(self.to_input(j, g) if need else None for j, need in enumerate(self.needs_input_grad))


def _run(kind: str, xs: list[Tensor], op: str, grad) -> list[Tensor]:
  sizes = [x.numel() for x in xs] if kind == "all_gather" else None
  plan = RingCollective(kind, [x.device for x in xs], sum(sizes) if sizes else xs[0].numel(), xs[0].dtype, op, sizes)
  outs = LazyBuffer.collective(plan, [x.lazydata.reshape((x.numel(),)) for x in xs], plan.out_specs())
  needs = any(x.requires_grad for x in xs) and not Tensor.no_grad
  ts = [Tensor(o, requires_grad=needs) for o in outs]
  if needs:
    for i, t in enumerate(ts): t._ctx = _OutputGrad(xs, lambda j, g, i=i: grad(i, j, g))
  return ts


def all_reduce(xs: list[Tensor], op: str = "sum") -> list[Tensor]:
  """Every device gets the reduction (sum, mean or max) of all devices' tensors, in the same bits."""
  _check(xs)
  if op not in ("sum", "mean", "max"): raise ValueError(f"all_reduce op {op!r}: expected 'sum', 'mean' or 'max'")
  if len(xs) == 1: return list(xs)
  n, shape = len(xs), xs[0].shape
  def grad(i, j, g):
    g = g.reshape(shape).copy_to(xs[j].device)
    if op == "mean": return g.alu(Op.MUL, g.const_like(1.0 / n))
    if op == "max": return g.alu(Op.MUL, xs[j].lazydata.alu(Op.CMPEQ, outs[j].lazydata).cast(g.dtype))
    return g
  outs = [o.reshape(shape) for o in _run("all_reduce", xs, op, grad)]
  return outs


def reduce_scatter(xs: list[Tensor], op: str = "sum") -> list[Tensor]:
  """Device i gets chunk i (of the flattened tensor, chunks as ring.bounds) reduced over all devices."""
  _check(xs)
  if op not in ("sum", "mean", "max"): raise ValueError(f"reduce_scatter op {op!r}: expected 'sum', 'mean' or 'max'")
  if len(xs) == 1: return [xs[0].reshape(-1)]
  n, total, chunks = len(xs), xs[0].numel(), bounds(xs[0].numel(), len(xs))
  def grad(i, j, g):
    lo, hi = chunks[i]
    g = g.copy_to(xs[j].device).pad(((lo, total - hi),)).reshape(xs[j].shape)
    return g.alu(Op.MUL, g.const_like(1.0 / n)) if op == "mean" else g
  if op == "max": grad = None   # the gradient of a scattered max is not needed anywhere; refuse it below
  if op == "max" and any(x.requires_grad for x in xs) and not Tensor.no_grad: raise ValueError("reduce_scatter with op 'max' has no gradient")
  return _run("reduce_scatter", xs, op, grad)


def all_gather(chunks: list[Tensor], shape=None) -> list[Tensor]:
  """Every device gets the concatenation of all chunks (chunk i lives on device i), reshaped to shape."""
  _check(chunks, same=False)
  flat = [c.reshape(-1) for c in chunks]
  if len(chunks) == 1: return [flat[0].reshape(shape) if shape is not None else flat[0]]
  offsets = [0]
  for c in flat: offsets.append(offsets[-1] + c.numel())
  def grad(i, j, g):
    return g.shrink(((offsets[j], offsets[j + 1]),)).copy_to(chunks[j].device).reshape(chunks[j].shape)
  outs = _run("all_gather", flat, "sum", grad)
  return [o.reshape(shape) for o in outs] if shape is not None else outs


def broadcast(x: Tensor, devices: list[str]) -> list[Tensor]:
  """x on every device of the list, relayed along the chain (each device copies from the previous)."""
  out, cur = [], x
  for d in devices:
    cur = cur if cur.device == d else cur.to(d)
    out.append(cur)
  return out
