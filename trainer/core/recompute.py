"""Activation recompute: `recompute(fn, *args)` is fn(*args) whose intermediates are not kept for backward.

The forward runs without recording the graph, so nothing inside the region holds an activation; only the
region's inputs are kept. When backward reaches the region's outputs, it runs fn again on the same inputs
with the graph recorded and backpropagates the outputs' gradients through that second forward: the
inputs get their gradients, the parameters fn reads get theirs added to `.grad` as usual. The scheduler
runs kernels in the order they were made, so each region's second forward runs just before its backward
and its activations are freed right after. Values are bit-identical to running fn directly.

Arguments and outputs may be Tensors, tensor-parallel Sharded values (anything with `.shards` and
`.axis`), or plain Python values. A region must not draw random numbers (dropout): its second forward
would draw different ones.
"""
from __future__ import annotations
import weakref
from .tensor import Tensor, backward, no_grad
from . import random


def _leaves(v) -> list[Tensor]:
  if isinstance(v, Tensor): return [v]
  if hasattr(v, "shards"): return list(v.shards)
  if isinstance(v, (tuple, list)): return [t for x in v for t in _leaves(x)]
  return []


def _rebuild(v, tensors):
  """v with each of its tensors replaced by the next of `tensors` (an iterator)."""
  if isinstance(v, Tensor): return next(tensors)
  if hasattr(v, "shards"): return type(v)([next(tensors) for _ in v.shards], v.axis)
  if isinstance(v, (tuple, list)): return type(v)(_rebuild(x, tensors) for x in v)
  return v


class _Region:
  """The autograd context of all outputs of one recomputed region (called once with all their gradients)."""
  def __init__(self, fn, args, outputs: list[Tensor]):
    self.fn, self.args = fn, args
    self.parents = _leaves(args)
    self.outputs = [weakref.ref(o) for o in outputs]

  def backward(self, grads: list):
    inputs = [Tensor(t.lazydata, requires_grad=t.requires_grad) for t in self.parents]
    outs = _leaves(self.fn(*_rebuild(self.args, iter(inputs))))
    pairs = [(o, Tensor(g)) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    backward([o for o, _ in pairs], [g for _, g in pairs])
    return tuple(x.grad.lazydata if x.grad is not None else None for x in inputs)


def recompute(fn, *args, needs_grad: bool | None = None):
  """fn(*args), recomputed in backward instead of keeping its activations. needs_grad: whether the outputs
  need a gradient (default: whether an input does; a caller whose fn reads parameters says so)."""
  inputs = _leaves(args)
  if needs_grad is None: needs_grad = any(t.requires_grad for t in inputs)
  if Tensor.no_grad or not needs_grad: return fn(*args)
  before = random.draws
  with no_grad(): out = fn(*args)
  if random.draws != before: raise ValueError("recompute: the region draws random numbers (e.g. dropout), which its second forward would not repeat")
  outputs = [Tensor(t.lazydata) for t in _leaves(out)]   # fresh tensors: an output may be an input as it is
  out = _rebuild(out, iter(outputs))
  ctx = _Region(fn, args, outputs)
  for o in outputs: o.requires_grad, o._ctx = True, ctx
  return out
