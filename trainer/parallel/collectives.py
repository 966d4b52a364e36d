"""Collectives over lists of per-device tensors: all-reduce (sum, mean, max), reduce-scatter, all-gather,
broadcast. No NCCL, no MPI.

Each collective is one node of the lazy graph (Op.COLLECTIVE, one output per device) that the scheduler
runs as one item: ring.RingCollective, a ring of chunked, pipelined peer-to-peer copies and local adds
(see ring.py). The JIT records and replays it like a kernel. Gradients are collectives too (one autograd
context for all outputs): an all-reduce's inputs get the all-reduce of the output gradients, a
reduce-scatter's the all-gather of them, an all-gather's chunks their reduce-scatter; max sends the
summed gradient to the inputs that hold the maximum.
"""
from __future__ import annotations
import weakref
from ..core import Tensor
from ..core.lazy import LazyBuffer
from ..core.ops import Op
from ..core import precision
from .ring import RingCollective, bounds

__all__ = ["all_reduce", "reduce_scatter", "all_gather", "broadcast"]


def _check(xs: list[Tensor], same: bool = True):
  if not xs: raise ValueError("collective over an empty list of tensors")
  if len({x.device for x in xs}) != len(xs): raise ValueError(f"collective needs one tensor per device, got devices {[x.device for x in xs]}")
  if same and len({(x.shape, x.dtype) for x in xs}) != 1:
    raise ValueError(f"collective needs equal shapes and dtypes, got {[(x.shape, x.dtype.name) for x in xs]}")
  if not same and len({x.dtype for x in xs}) != 1: raise ValueError(f"collective needs equal dtypes, got {[x.dtype.name for x in xs]}")


def _collective(kind: str, lbs: list[LazyBuffer], op: str, sizes=None) -> list[LazyBuffer]:
  """The outputs of one ring collective over flat LazyBuffers (one per device)."""
  precision.note("comm", lbs[0].dtype)
  plan = RingCollective(kind, [x.device for x in lbs], sum(sizes) if sizes else lbs[0].size, lbs[0].dtype, op, sizes)
  return LazyBuffer.collective(plan, [x.reshape((x.size,)) for x in lbs], plan.out_specs())


class _CollectiveGrad:
  """The autograd context of all outputs of one collective: Tensor.backward calls it once with every
  output's gradient (None where one got none) and it returns every input's."""
  def __init__(self, parents: list[Tensor], outputs: list[Tensor], grad):
    self.parents, self.grad = parents, grad
    self.outputs, self.shapes = [weakref.ref(o) for o in outputs], [o.shape for o in outputs]
    self.needs_input_grad = [p.requires_grad for p in parents]

  def backward(self, gs: list):
    gs = [g if g is not None else LazyBuffer.const(0, p.dtype, shape, p.device) for g, p, shape in zip(gs, self.parents, self.shapes)]
    return tuple(g if need else None for g, need in zip(self.grad(gs), self.needs_input_grad))


def _run(kind: str, xs: list[Tensor], op: str, grad) -> list[Tensor]:
  sizes = [x.numel() for x in xs] if kind == "all_gather" else None
  outs = _collective(kind, [x.lazydata for x in xs], op, sizes)
  needs = any(x.requires_grad for x in xs) and not Tensor.no_grad
  ts = [Tensor(o, requires_grad=needs) for o in outs]
  if needs:
    ctx = _CollectiveGrad(xs, ts, grad)
    for t in ts: t._ctx = ctx
  return ts


def all_reduce(xs: list[Tensor], op: str = "sum") -> list[Tensor]:
  """Every device gets the reduction (sum, mean or max) of all devices' tensors, in the same bits."""
  _check(xs)
  if op not in ("sum", "mean", "max"): raise ValueError(f"all_reduce op {op!r}: expected 'sum', 'mean' or 'max'")
  if len(xs) == 1: return list(xs)
  shape = xs[0].shape
  def grad(gs):
    summed = [g.reshape(shape) for g in _collective("all_reduce", gs, "mean" if op == "mean" else "sum")]
    if op != "max": return summed
    return [g.alu(Op.MUL, x.lazydata.alu(Op.CMPEQ, o.lazydata).cast(g.dtype)) for g, x, o in zip(summed, xs, outs)]
  outs = [o.reshape(shape) for o in _run("all_reduce", xs, op, grad)]
  return outs


def reduce_scatter(xs: list[Tensor], op: str = "sum") -> list[Tensor]:
  """Device i gets chunk i (of the flattened tensor, chunks as ring.bounds) reduced over all devices."""
  _check(xs)
  if op not in ("sum", "mean", "max"): raise ValueError(f"reduce_scatter op {op!r}: expected 'sum', 'mean' or 'max'")
  if len(xs) == 1: return [xs[0].reshape(-1)]
  if op == "max" and any(x.requires_grad for x in xs) and not Tensor.no_grad: raise ValueError("reduce_scatter with op 'max' has no gradient")
  n = len(xs)
  def grad(gs):
    full = [g.reshape(x.shape) for g, x in zip(_collective("all_gather", gs, "sum", [g.size for g in gs]), xs)]
    return [g.alu(Op.MUL, g.const_like(1.0 / n)) for g in full] if op == "mean" else full
  return _run("reduce_scatter", xs, op, grad)


def all_gather(chunks: list[Tensor], shape=None) -> list[Tensor]:
  """Every device gets the concatenation of all chunks (chunk i lives on device i), reshaped to shape."""
  _check(chunks, same=False)
  flat = [c.reshape(-1) for c in chunks]
  if len(chunks) == 1: return [flat[0].reshape(shape) if shape is not None else flat[0]]
  def grad(gs):
    return [g.reshape(c.shape) for g, c in zip(_collective("reduce_scatter", gs, "sum", [c.numel() for c in flat]), flat)]
  outs = _run("all_gather", flat, "sum", grad)
  return [o.reshape(shape) for o in outs] if shape is not None else outs


def broadcast(x: Tensor, devices: list[str]) -> list[Tensor]:
  """x on every device of the list, relayed along the chain (each device copies from the previous)."""
  out, cur = [], x
  for d in devices:
    cur = cur if cur.device == d else cur.to(d)
    out.append(cur)
  return out
