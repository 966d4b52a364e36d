"""The lazy graph. A LazyBuffer is a node: either a *base* (an op that produces a contiguous array of
its shape) or a *view* of a base (movement ops only change the View). Nothing is computed until the
scheduler (schedule.py) is asked to realize a node; then it gets a device Buffer and its op is done.
Every node carries its creation number (`seq`): the scheduler runs kernels in the order the program
made their outputs, which is the order eager execution would have run them.
"""
from __future__ import annotations
import itertools, math, weakref
import numpy as np
from .ops import Op, ALU, COMPARE
from .dtypes import DType, dtypes
from .view import View
from .custom import CustomCall


_created = itertools.count()
ROWS_ENOUGH = 1024   # outputs of a reduction over the innermost axis that keep a GPU busy without splitting it


class LazyBuffer:
  __slots__ = ("device", "dtype", "shape", "op", "srcs", "arg", "buffer", "seq", "__weakref__")

  def __init__(self, device: str, dtype: DType, shape: tuple, op: Op, srcs=(), arg=None, buffer=None):
    self.device, self.dtype, self.shape, self.op, self.srcs, self.arg, self.buffer = device, dtype, tuple(shape), op, tuple(srcs), arg, buffer
    self.seq = next(_created)

  def __repr__(self): return f"<LB {self.op.name} {self.shape} {self.dtype.name} {self.device}{' realized' if self.realized else ''}>"

  # ---- structure ----
  @property
  def base(self) -> LazyBuffer: return self.srcs[0] if self.op is Op.VIEW else self
  @property
  def view(self) -> View: return self.arg if self.op is Op.VIEW else View.create(self.shape)
  @property
  def realized(self) -> bool: return self.base.buffer is not None
  @property
  def size(self): return math.prod(self.shape)

  # ---- constructors ----
  @staticmethod
  def from_buffer(buffer, shape) -> LazyBuffer:
    return LazyBuffer(buffer.device, buffer.dtype, shape, Op.BUFFER, buffer=buffer)

  @staticmethod
  def const(value, dtype: DType, shape, device: str) -> LazyBuffer:
    value = bool(value) if dtype is dtypes.bool else (int(value) if dtype.is_int else float(value))
    if dtype.is_int: value = int(np.array(value).astype(dtype.np))   # integers wrap into the dtype's range
    base = LazyBuffer(device, dtype, (), Op.CONST, arg=value)
    return base._view(View.create((1,) * len(shape), (0,) * len(shape)).expand(tuple(shape))) if shape else base

  def const_like(self, value, dtype=None) -> LazyBuffer: return LazyBuffer.const(value, dtype or self.dtype, self.shape, self.device)

  # ---- compute ----
  def alu(self, op: Op, *others: LazyBuffer, dtype: DType | None = None) -> LazyBuffer:
    srcs = (self, *others)
    assert op in ALU and all(s.shape == self.shape for s in srcs), (op, [s.shape for s in srcs])
    out = dtypes.bool if op in COMPARE else (dtype or (srcs[1].dtype if op is Op.WHERE else self.dtype))
    return LazyBuffer(self.device, out, self.shape, op, srcs, arg=dtype if op is Op.CAST else None)

  def cast(self, dtype: DType) -> LazyBuffer: return self if dtype == self.dtype else self.alu(Op.CAST, dtype=dtype)

  def reduce(self, op: Op, axes: tuple) -> LazyBuffer:
    axes = tuple(sorted(a for a in axes if self.shape[a] != 1))
    if not axes: return self
    shape = tuple(1 if i in axes else s for i, s in enumerate(self.shape))
    split = self._split_reduce(op, axes, shape)
    return split if split is not None else LazyBuffer(self.device, self.dtype, shape, Op.REDUCE, (self,), (op, axes))

  @property
  def broadcast_product(self) -> bool:
    """A product of two operands each broadcast (expanded) over some axis: summed over one axis, a matrix
    product, which the backends run as one (never materialising the product itself)."""
    def expanded(x):
      while x.op is Op.CAST: x = x.srcs[0]
      return x.op is Op.VIEW and any(st == 0 and s > 1 for s, st in zip(x.arg.shape, x.arg.strides))
    return self.op is Op.MUL and all(expanded(s) for s in self.srcs)

  def _split_reduce(self, op: Op, axes: tuple, shape: tuple) -> LazyBuffer | None:
    """A large reduction into few outputs (a column sum, a whole-tensor sum) as two: the longest reduced
    axis is cut into f parts that first reduce separately (f times more outputs to work on in parallel),
    then the f partial results are reduced. Same result up to the order of additions. Never a matrix
    product: cutting its reduced axis would need the product itself in memory."""
    if self.broadcast_product: return None
    red = math.prod(self.shape[a] for a in axes)
    out = self.size // red
    if red < 4096 or out >= 16384 or out * red < (1 << 20): return None
    a = max(axes, key=lambda i: self.shape[i])
    # many rows, each reduced along the innermost axis (a softmax over the vocabulary) are work enough; cutting
    # the rows would make the scheduler store the expression being reduced (the logits' float32 pieces)
    if a == len(self.shape) - 1 and out >= ROWS_ENOUGH: return None
    f = next((f for f in (256, 128, 64, 32, 16) if self.shape[a] % f == 0 and self.shape[a] // f >= 16), None)
    if f is None: return None
    x = self.reshape(self.shape[:a] + (f, self.shape[a] // f) + self.shape[a + 1:])
    part = x.reduce(op, tuple(a + 1 if i == a else i + (i > a) for i in axes))
    return part.reduce(op, (a,)).reshape(shape)

  def contiguous(self, stored: bool = False) -> LazyBuffer:
    """A buffer of its own for a view or constant; stored=True makes any node a kernel's output (a value that one
    kernel would otherwise recompute for each of its readers)."""
    if self.op is not Op.VIEW and self.op is not Op.CONST and not stored: return self
    return LazyBuffer(self.device, self.dtype, self.shape, Op.CONTIGUOUS, (self,))

  def copy_to(self, device: str) -> LazyBuffer:
    if device == self.device: return self
    return LazyBuffer(device, self.dtype, self.shape, Op.COPY, (self.contiguous(),))

  def assign(self, value: LazyBuffer) -> LazyBuffer:
    """In-place: the result's buffer is self's buffer (self must be a realized, contiguous base)."""
    assert self.op is not Op.VIEW and value.shape == self.shape and value.dtype == self.dtype
    return LazyBuffer(self.device, self.dtype, self.shape, Op.ASSIGN, (self, value))

  @staticmethod
  def custom(kernel, srcs, outputs, into=None) -> list[LazyBuffer]:
    """The outputs ((shape, dtype) each) of a hand-written kernel (custom.CustomKernel), made together by one
    item of the schedule; it reads its sources as contiguous arrays. `into` (one entry per output, or None):
    realized buffers (bases of the output's size and type) that the kernel writes in place of new ones, after
    everything else that reads their old values (as an assign would)."""
    srcs = [s if s.view.contiguous else s.contiguous() for s in srcs]
    assert len({s.device for s in srcs}) == 1, "a custom kernel's sources must be on one device"
    for t, (shape, dt) in zip(into or (), outputs):
      assert t.op is Op.BUFFER and t.realized and t.dtype == dt and t.size == math.prod(shape), "custom: an `into` target must be a realized buffer of the output's size and type"
    call = CustomCall(kernel, srcs[0].device, outputs, into)
    outs = [LazyBuffer(call.device, dt, shape, Op.CUSTOM, srcs, call) for shape, dt in call.specs]
    call.outputs = [weakref.ref(o) for o in outs]
    return outs

  @staticmethod
  def collective(plan, srcs, outputs) -> list[LazyBuffer]:
    """The outputs ((device, dtype, shape) each) of a collective over the sources (one per device), made
    together by one item of the schedule that runs plan.run(input buffers, output buffers)."""
    srcs = [s if s.view.contiguous else s.contiguous() for s in srcs]
    outs = [LazyBuffer(d, dt, shape, Op.COLLECTIVE, srcs, plan) for d, dt, shape in outputs]
    plan.outputs = [weakref.ref(o) for o in outs]
    return outs

  # ---- movement ----
  def _view(self, v: View) -> LazyBuffer:
    base = self.base
    if v.shape == base.shape and v.contiguous: return base
    return LazyBuffer(self.device, self.dtype, v.shape, Op.VIEW, (base,), v)

  def _move(self, fn) -> LazyBuffer:
    v = fn(self.view)
    if v is None:
      v = fn(self.contiguous().view)
      return self.contiguous()._view(v)
    return self._view(v)

  def windows(self, kernel, stride, dilation) -> LazyBuffer:
    """(..., H, W) -> (..., OH, OW, kh, kw): the kh x kw window of every output position (stride, dilation), as one
    view with overlapping strides over what self reads (no copy; a view with a mask, a pad, is copied once first).
    No movement op makes such a view, so autograd reaches it only through a Function with its own rule
    (functional.py)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    *lead, H, W = self.shape
    oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    x = self if self.view.mask is None else self.contiguous()
    *ls, sH, sW = x.view.strides
    return x.base._view(View.create((*lead, oh, ow, kh, kw), (*ls, sh * sH, sw * sW, dh * sH, dw * sW), x.view.offset))

  def reshape(self, shape): return self if tuple(shape) == self.shape else self._move(lambda v: v.reshape(tuple(shape)))
  def permute(self, order): return self if tuple(order) == tuple(range(len(order))) else self._move(lambda v: v.permute(tuple(order)))
  def expand(self, shape): return self if tuple(shape) == self.shape else self._move(lambda v: v.expand(tuple(shape)))
  def pad(self, arg): return self if all(a == (0, 0) for a in arg) else self._move(lambda v: v.pad(tuple(arg)))
  def shrink(self, arg): return self if all(a == (0, s) for a, s in zip(arg, self.shape)) else self._move(lambda v: v.shrink(tuple(arg)))
  def flip(self, axes): return self if not axes else self._move(lambda v: v.flip(tuple(axes)))
