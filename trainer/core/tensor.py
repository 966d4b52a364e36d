"""Tensor: the user-facing, PyTorch-style array with reverse-mode autograd.

A Tensor wraps a LazyBuffer; ops only build the graph (function.py holds the primitive ops and their
gradients, everything else here composes them). `realize()`, `numpy()`, `item()` and `tolist()` run it.
Random numbers come from a counter-based generator (random.py) whose counter lives on the device.
"""
from __future__ import annotations
import math, weakref
from collections import namedtuple
from contextlib import contextmanager
import numpy as np
from .dtypes import dtypes, DType, promote, scalar_dtype, from_storage, to_storage
from .lazy import LazyBuffer
from .device import Buffer, canonical
from .ops import Op
from .realize import realize as _realize
from . import function as F


class TensorError(RuntimeError, ValueError):
  """Shapes or values that do not fit an op: a RuntimeError where torch raises one, and a ValueError, so the
  launcher's handling of bad input (except ValueError) still catches it."""


ValuesIndices = namedtuple("ValuesIndices", "values indices")   # what max(dim) and min(dim) return, as torch.return_types


def _shape_str(s): return str(tuple(s))


def _dim(dim, axis):
  """The axes of a reduction from torch's dim= or its alias axis= (one of them)."""
  if axis is None: return dim
  if dim is not None: raise TypeError("pass dim or axis, not both")
  return axis


def broadcast_shape(*shapes, op="op"):
  nd = max(len(s) for s in shapes)
  padded = [(1,) * (nd - len(s)) + tuple(s) for s in shapes]
  out = []
  for dims in zip(*padded):
    big = {d for d in dims if d != 1}
    if len(big) > 1: raise TensorError(f"{op}: shapes {' and '.join(_shape_str(s) for s in shapes)} cannot be broadcast together")
    out.append(big.pop() if big else 1)
  return tuple(out)


pending_assigns: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # id -> tensor with an in-place update not yet run


class Tensor:
  no_grad: bool = False
  training: bool = False
  __slots__ = ("lazydata", "requires_grad", "grad", "_ctx", "__weakref__")

  def __init__(self, data, device=None, dtype=None, requires_grad=None):
    if dtype is not None: dtype = dtypes.get(dtype)
    if isinstance(data, LazyBuffer):
      lb = data if dtype is None or dtype == data.dtype else data.cast(dtype)
    else:
      device = canonical(device)
      if isinstance(data, Tensor): data = data.numpy()
      if isinstance(data, (bool, int, float)):
        lb = LazyBuffer.const(data, dtype or scalar_dtype(data), (), device)
      else:
        arr = np.asarray(data)
        if arr.dtype == object: raise TypeError(f"cannot make a Tensor from {type(data).__name__} holding {arr.dtype}")
        dt = dtype or dtypes.get(arr.dtype)   # float64 data becomes float32; other numpy types are kept
        buf = Buffer(device, arr.size, dt).copyin(arr)
        lb = LazyBuffer.from_buffer(buf, arr.shape)
    self.lazydata: LazyBuffer = lb
    self.requires_grad: bool = bool(requires_grad)
    self.grad: Tensor | None = None
    self._ctx = None

  # ---- properties ----
  @property
  def shape(self): return self.lazydata.shape
  @property
  def dtype(self) -> DType: return self.lazydata.dtype
  @property
  def device(self) -> str: return self.lazydata.device
  @property
  def ndim(self): return len(self.shape)
  def numel(self): return math.prod(self.shape)
  def __len__(self):
    if not self.shape: raise TypeError("len() of a 0-d tensor")
    return self.shape[0]
  def __repr__(self): return f"<Tensor {_shape_str(self.shape)} {self.dtype.name} on {self.device}{' grad' if self.requires_grad else ''}>"
  def size(self, dim=None): return self.shape if dim is None else self.shape[dim]

  # ---- running the graph ----
  def realize(self) -> Tensor:
    Tensor.realize_all(self); return self

  @staticmethod
  def realize_all(*tensors):
    for t in tensors:   # a constant has no memory of its own until it is materialised
      if t.lazydata.base.op is Op.CONST: t.lazydata = t.lazydata.contiguous()
    lbs = [t.lazydata for t in tensors if not t.lazydata.realized]
    if lbs: _realize(*lbs)

  def numpy(self) -> np.ndarray:
    lb = self.lazydata
    if lb.op is Op.CONST or (lb.op is Op.VIEW and lb.base.op is Op.CONST):
      return from_storage(to_storage(np.full(self.shape, lb.base.arg), self.dtype), self.dtype)   # rounded as if stored
    # a view that reads the leading elements of its base in order (a reshape) needs no copy kernel
    c = lb.base if lb.op is Op.VIEW and lb.view.contiguous else lb.contiguous()
    _realize(c)
    if c is not lb and lb.op is not Op.VIEW: self.lazydata = c
    return from_storage(c.buffer.numpy()[:self.numel()], self.dtype).reshape(self.shape)

  def item(self):
    if self.numel() != 1: raise TensorError(f"item() needs a tensor with one element, got shape {_shape_str(self.shape)}")
    return self.numpy().reshape(()).item()
  def tolist(self): return self.numpy().tolist()

  def detach(self) -> Tensor: return Tensor(self.lazydata)
  def requires_grad_(self, requires_grad=True) -> Tensor:
    self.requires_grad = requires_grad; return self
  def dim(self): return self.ndim
  def to(self, *args, device=None, dtype=None, non_blocking=False, copy=False) -> Tensor:
    """torch's to: to(device), to(dtype), to(device, dtype), to(other) (its device and dtype), or keywords.
    Copies are lazy, so non_blocking changes nothing."""
    for a in args:
      if isinstance(a, Tensor): device, dtype = a.device, a.dtype
      elif _as_dtype(a) is not None: dtype = a
      else: device = a
    out = self
    if device is not None and canonical(device) != self.device: out = F.Copy.apply(out, device=canonical(device))
    if dtype is not None: out = out.cast(dtype)
    return out.clone() if copy and out is self else out
  def cpu(self): return self.to("CPU:0")
  def cuda(self, device=None): return self.to(device if isinstance(device, str) else f"CUDA:{device or 0}")
  def contiguous(self): return F.Contiguous.apply(self)
  def clone(self): return Tensor(self.lazydata.contiguous() if self.lazydata.op is Op.VIEW else self.lazydata.alu(Op.ADD, self.lazydata.const_like(0)), requires_grad=False) if not self.requires_grad else self + 0

  def assign(self, x) -> Tensor:
    """Write x into this tensor's memory (in place). Used by optimizers so the JIT can replay updates."""
    x = x if isinstance(x, Tensor) else Tensor(x, device=self.device, dtype=self.dtype)
    if x.shape != self.shape: raise TensorError(f"assign: shape {_shape_str(x.shape)} does not match {_shape_str(self.shape)}")
    if x.device != self.device: raise TensorError(f"assign: value on {x.device}, tensor on {self.device}")
    x = x.cast(self.dtype)
    lb = self.lazydata
    if lb.op is Op.BUFFER or lb.op is Op.ASSIGN:
      self.lazydata = lb.assign(x.lazydata)
      pending_assigns[id(self)] = self
    else: self.lazydata = x.lazydata
    return self

  # ---- creation ----
  @staticmethod
  def full(shape, value, dtype=None, device=None, requires_grad=False) -> Tensor:
    shape = _shape_arg(shape)
    dt = dtypes.get(dtype) if dtype is not None else scalar_dtype(value)
    return Tensor(LazyBuffer.const(value, dt, shape, canonical(device)), requires_grad=requires_grad)
  @staticmethod
  def zeros(*shape, **kw): return Tensor.full(_shape_arg(shape), 0.0, **{"dtype": dtypes.float32, **kw})
  @staticmethod
  def ones(*shape, **kw): return Tensor.full(_shape_arg(shape), 1.0, **{"dtype": dtypes.float32, **kw})
  def zeros_like(self, **kw): return Tensor.full(self.shape, 0, **{"dtype": self.dtype, "device": self.device, **kw})
  def ones_like(self, **kw): return Tensor.full(self.shape, 1, **{"dtype": self.dtype, "device": self.device, **kw})
  def full_like(self, v, **kw): return Tensor.full(self.shape, v, **{"dtype": self.dtype, "device": self.device, **kw})
  def new_full(self, size, fill_value, **kw): return Tensor.full(size, fill_value, **{"dtype": self.dtype, "device": self.device, **kw})
  def new_zeros(self, *size, **kw): return self.new_full(_shape_arg(size), 0, **kw)
  def new_ones(self, *size, **kw): return self.new_full(_shape_arg(size), 1, **kw)
  def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
    return Tensor(data, device=device or self.device, dtype=dtype or self.dtype, requires_grad=requires_grad)

  @staticmethod
  def arange(start, end=None, step=1, dtype=None, device=None) -> Tensor:
    if end is None: start, end = 0, start
    n = max(0, math.ceil((end - start) / step))
    dt = dtypes.get(dtype) if dtype else (dtypes.default_float if any(isinstance(x, float) for x in (start, end, step)) else dtypes.default_int)
    return (_ramp(n, device).cast(dt) * step + start).cast(dt)

  @staticmethod
  def eye(n, m=None, dtype=None, device=None) -> Tensor:
    m = n if m is None else m
    r = _ramp(n, device).reshape(n, 1).expand(n, m)
    c = _ramp(m, device).reshape(1, m).expand(n, m)
    return (r == c).cast(dtypes.get(dtype) if dtype else dtypes.float32)

  @staticmethod
  def manual_seed(seed: int = 0):
    from . import random
    random.manual_seed(seed)
  @staticmethod
  def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    from . import random
    return random.uniform(_shape_arg(shape), dtypes.get(dtype) if dtype else dtypes.float32, canonical(device), requires_grad)
  @staticmethod
  def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    shape = _shape_arg(shape)
    u1, u2 = Tensor.rand(*shape, device=device), Tensor.rand(*shape, device=device)
    z = ((1 - u1).log() * -2).sqrt() * (u2 * (2 * math.pi)).cos()
    z = z.cast(dtypes.get(dtype) if dtype else dtypes.float32).detach()
    z.requires_grad = requires_grad
    return z
  @staticmethod
  def randint(*args, size=None, dtype=None, device=None) -> Tensor:
    """torch.randint(high, size) or (low, high, size): integers in [low, high)."""
    if size is None: *args, size = args
    low, high = (0, *args) if len(args) == 1 else args
    return (Tensor.rand(*_shape_arg(size), device=device) * (high - low)).cast(dtypes.int32).clamp(0, high - low - 1).cast(dtypes.get(dtype) if dtype else dtypes.int32) + low
  @staticmethod
  def uniform(*shape, low=0.0, high=1.0, **kw) -> Tensor:
    rg = kw.pop("requires_grad", False)
    t = (Tensor.rand(*shape, **kw) * (high - low) + low).detach(); t.requires_grad = rg
    return t
  @staticmethod
  def kaiming_uniform(*shape, a=math.sqrt(5), **kw) -> Tensor:
    shape = _shape_arg(shape)
    bound = math.sqrt(3.0) * math.sqrt(2.0 / (1 + a ** 2)) / math.sqrt(math.prod(shape[1:]))
    return Tensor.uniform(*shape, low=-bound, high=bound, **kw)

  # ---- autograd ----
  def backward(self, gradient: Tensor | None = None) -> Tensor:
    if gradient is None:
      if self.numel() != 1: raise TensorError(f"backward() without a gradient needs a scalar, got shape {_shape_str(self.shape)}")
      gradient = Tensor.full(self.shape, 1.0, dtype=self.dtype, device=self.device)
    backward([self], [gradient])
    return self

  # ---- elementwise ----
  def _binop(self, other, op_name, reverse=False):
    x, y = self, other
    if not isinstance(y, Tensor):
      if not isinstance(y, (int, float, bool)): y = Tensor(y, device=self.device)
      else:
        sd = scalar_dtype(y)   # a Python scalar never widens a tensor of its own kind or above
        dt = self.dtype if self.dtype.is_float or sd is dtypes.bool or (sd.is_int and self.dtype.is_int) else sd
        y = Tensor(LazyBuffer.const(y, dt, (), self.device))
    if reverse: x, y = y, x
    if x.device != y.device: raise TensorError(f"{op_name}: tensors on different devices ({x.device} and {y.device})")
    shape = broadcast_shape(x.shape, y.shape, op=op_name)
    dt = promote(x.dtype, y.dtype)
    return x.cast(dt).expand_to(shape), y.cast(dt).expand_to(shape)

  def expand_to(self, shape):
    shape = tuple(shape)
    if self.shape == shape: return self
    x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape) if self.ndim < len(shape) else self
    return x.expand(shape)

  def _add(self, y, reverse=False): return F.Add.apply(*self._binop(y, "add", reverse))
  def _sub(self, y, reverse=False):
    a, b = self._binop(y, "sub", reverse)
    return F.Add.apply(a, F.Neg.apply(b))
  def _mul(self, y, reverse=False): return F.Mul.apply(*self._binop(y, "mul", reverse))
  def _div(self, y, reverse=False):
    a, b = self._binop(y, "div", reverse)
    if not a.dtype.is_float: a, b = a.cast(dtypes.float32), b.cast(dtypes.float32)
    return F.Mul.apply(a, F.Reciprocal.apply(b))
  def _alu(self, y, op, name, reverse=False):
    a, b = self._binop(y, name, reverse)
    return Tensor(a.lazydata.alu(op, b.lazydata))
  def _floor_div_mod(self, y, reverse=False, want="div"):
    """Python's and torch's // and % (rounding toward minus infinity) from the C-style primitives: the
    truncated quotient and remainder, stepped by one divisor where the remainder's sign differs from b's."""
    a, b = self._binop(y, "floor_divide" if want == "div" else "remainder", reverse)
    if want == "mod" and a.dtype.is_float and (a.requires_grad or b.requires_grad):
      return _Remainder.apply(a, b, a.detach()._floor_div_mod(b.detach(), want="mod"), a.detach()._floor_div_mod(b.detach()))
    a, b = a.detach(), b.detach()   # the quotient carries no gradient (the remainder's is _Remainder's)
    r = Tensor(a.lazydata.alu(Op.MOD, b.lazydata))
    step = (r != 0) & ((r < 0) ^ (b < 0))
    if want == "mod": return where(step, r + b, r)
    if a.dtype.is_int: return Tensor(a.lazydata.alu(Op.IDIV, b.lazydata)) - step.cast(a.dtype)
    q = where(step, (a - r) / b - 1, (a - r) / b)   # (a - r) / b is within rounding of an integer
    fl = q.floor()
    return where(b == 0, a / b, where(q - fl > 0.5, fl + 1, fl))

  def add(self, other, *, alpha=1): return self._add(other if alpha == 1 else other * alpha)
  def sub(self, other, *, alpha=1): return self._sub(other if alpha == 1 else other * alpha)
  def mul(self, other): return self._mul(other)
  def div(self, other, *, rounding_mode=None):
    """other's quotient: true division (None), truncated toward zero ('trunc') or floored ('floor'), as torch.div."""
    if rounding_mode is None: return self._div(other)
    if rounding_mode == "floor": return self._floor_div_mod(other)
    if rounding_mode == "trunc":
      q = self._alu(other, Op.IDIV, "div")
      return q if q.dtype.is_int else q.trunc()
    raise TensorError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
  def true_divide(self, other): return self._div(other)
  def floor_divide(self, other): return self._floor_div_mod(other)
  def remainder(self, other): return self._floor_div_mod(other, want="mod")
  def fmod(self, other):
    """The remainder with the sign of self (C's %, torch.fmod); `%` is the floored remainder."""
    a, b = self._binop(other, "fmod")
    r = Tensor(a.lazydata.alu(Op.MOD, b.lazydata))
    if not (a.dtype.is_float and (a.requires_grad or b.requires_grad)): return r
    return _Remainder.apply(a, b, r, a.detach().div(b.detach(), rounding_mode="trunc"))
  def pow(self, exponent): return self._pow(exponent)
  def _pow(self, y, reverse=False):
    if not reverse and isinstance(y, (int, float)) and not isinstance(y, bool):
      if y == 2: return self * self
      if y == 1: return self
      if y == 0.5: return self.sqrt()
      if y == -1: return self.reciprocal()
      if isinstance(y, int) and y == 3: return self * self * self
    a, b = self._binop(y, "pow", reverse)
    if a.dtype.is_float: return _Pow.apply(a, b) if a.requires_grad or b.requires_grad else _pow_value(a, b)
    out = _pow_value(a.cast(dtypes.float32), b.cast(dtypes.float32))
    return where(b < 0, out, out + where(out < 0, -0.5, 0.5)).trunc().cast(a.dtype)   # integers: exact powers rounded, negative ones truncated
  def maximum(self, y): return F.Maximum.apply(*self._binop(y, "maximum"))
  def minimum(self, y):
    a, b = self._binop(y, "minimum")
    return a._reverse_order().maximum(b._reverse_order())._reverse_order()
  def _reverse_order(self):
    """An order-reversing map that is its own inverse and never overflows (min from max): -x for floats,
    not for bool, ~x (all bits flipped) for integers."""
    if not self.dtype.is_int: return -self
    return self ^ ((1 << 8 * self.dtype.itemsize) - 1 if self.dtype.kind == "u" else -1)
  def where(self, condition, y):
    """torch's method: self where condition else y (the free function is where(condition, x, y))."""
    return where(condition, self, y)
  def masked_fill(self, mask, value):
    """value where mask is True, self elsewhere (mask is bool and broadcasts to self; value a scalar or 0-d tensor)."""
    if not isinstance(mask, Tensor) or mask.dtype is not dtypes.bool:
      raise TensorError(f"masked_fill: the mask must be a bool tensor, got {mask.dtype.name if isinstance(mask, Tensor) else type(mask).__name__}")
    if isinstance(value, Tensor):
      if value.ndim: raise TensorError(f"masked_fill: value must be a 0-d tensor, got shape {_shape_str(value.shape)}")
      value = value.cast(self.dtype)
    else: value = Tensor(LazyBuffer.const(value, self.dtype, (), self.device))
    return where(mask, value, self)

  def _cmp(self, y, op, reverse=False, name="compare"):
    a, b = self._binop(y, name, reverse)
    return Tensor(a.lazydata.alu(op, b.lazydata))
  def __lt__(self, y): return self._cmp(y, Op.CMPLT, name="lt")
  def __gt__(self, y): return self._cmp(y, Op.CMPLT, True, name="gt")
  def __le__(self, y): return (self > y).logical_not()
  def __ge__(self, y): return (self < y).logical_not()
  def __eq__(self, y): return self._cmp(y, Op.CMPEQ, name="eq")          # type: ignore[override]
  def __ne__(self, y): return (self == y).logical_not()                # type: ignore[override]
  lt, gt, le, ge, eq, ne = __lt__, __gt__, __le__, __ge__, __eq__, __ne__
  def logical_not(self): return Tensor(self.lazydata.alu(Op.CMPEQ, self.lazydata.const_like(0 if self.dtype is not dtypes.bool else False)))
  def __and__(self, y): return self._alu(y, Op.AND, "and")
  def __or__(self, y): return self._alu(y, Op.OR, "or")
  def __xor__(self, y): return self._alu(y, Op.XOR, "xor")
  def __lshift__(self, y): return self._alu(y, Op.SHL, "shl")
  def __rshift__(self, y): return self._alu(y, Op.SHR, "shr")
  __hash__ = object.__hash__

  __add__ = _add; __mul__ = _mul; __sub__ = _sub; __truediv__ = _div; __pow__ = _pow; __floordiv__ = floor_divide; __mod__ = remainder
  def __radd__(self, y): return self._add(y, True)
  def __rsub__(self, y): return self._sub(y, True)
  def __rmul__(self, y): return self._mul(y, True)
  def __rtruediv__(self, y): return self._div(y, True)
  def __rpow__(self, y): return self._pow(y, True)
  def __rfloordiv__(self, y): return self._floor_div_mod(y, True)
  def __rmod__(self, y): return self._floor_div_mod(y, True, want="mod")
  def __neg__(self): return F.Neg.apply(self) if self.dtype is not dtypes.bool else self.logical_not()
  def __matmul__(self, y): return self.matmul(y)
  def __rmatmul__(self, y): return Tensor(y, device=self.device).matmul(self) if not isinstance(y, Tensor) else y.matmul(self)
  def __iadd__(self, y): return self.assign(self + y)
  def __isub__(self, y): return self.assign(self - y)
  def __imul__(self, y): return self.assign(self * y)

  def cast(self, dtype) -> Tensor:
    dtype = dtypes.get(dtype)
    return self if dtype == self.dtype else F.Cast.apply(self, dtype=dtype)
  def type(self, dtype): return self.cast(dtype)
  def type_as(self, other: Tensor): return self.cast(other.dtype)
  def float(self): return self.cast(dtypes.float32)
  def half(self): return self.cast(dtypes.float16)
  def bfloat16(self): return self.cast(dtypes.bfloat16)
  def int(self): return self.cast(dtypes.int32)
  def long(self): return self.cast(dtypes.int64)
  def bool(self): return self.cast(dtypes.bool)
  def _float(self): return self if self.dtype.is_float else self.cast(dtypes.float32)

  def neg(self): return -self
  def reciprocal(self): return F.Reciprocal.apply(self._float())
  def sqrt(self): return F.Sqrt.apply(self._float())
  def rsqrt(self): return self.sqrt().reciprocal()
  def exp(self): return F.Exp.apply(self._float())
  def exp2(self): return (self._float() * math.log(2)).exp()
  def log(self): return F.Log.apply(self._float())
  def log2(self): return self.log() * (1 / math.log(2))
  def sin(self): return F.Sin.apply(self._float())
  def cos(self): return (math.pi / 2 - self._float()).sin()
  def tanh(self): return 2.0 * (2.0 * self._float()).sigmoid() - 1.0
  def sigmoid(self): return F.Sigmoid.apply(self._float())
  def erf(self): return F.Erf.apply(self._float())
  def trunc(self):
    """Rounded toward zero (integers are returned as they are); the gradient is zero, as torch's."""
    return self if not self.dtype.is_float else Tensor(self.lazydata.alu(Op.IDIV, self.lazydata.const_like(1.0)))
  def floor(self):
    t = self.trunc()
    return t if not self.dtype.is_float else where(t > self, t - 1, t)
  def ceil(self): return -(-self).floor()
  def relu(self):
    """max(x, 0) as torch's: a NaN stays NaN, with no gradient (threshold_backward passes none where x > 0 fails)."""
    if not self.dtype.is_float: return self.where(self > 0, 0)
    return self.where(self > 0, self.detach().where(self != self, 0.0))
  def leaky_relu(self, negative_slope=0.01): return self.where(self > 0, self * negative_slope)
  def gelu(self, approximate="none"):
    """x * Phi(x) with the exact erf form (torch's default), or its tanh approximation with approximate='tanh'."""
    if approximate == "tanh": return 0.5 * self * (1 + (math.sqrt(2 / math.pi) * (self + 0.044715 * self * self * self)).tanh())
    if approximate != "none": raise TensorError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * self * (1 + (self * (1 / math.sqrt(2))).erf())
  def silu(self): return self * self.sigmoid()
  def swish(self): return self.silu()
  def abs(self): return F.Abs.apply(self) if self.dtype is not dtypes.bool else self
  def sign(self): return (self > 0).cast(self.dtype) - (self < 0).cast(self.dtype)
  def square(self): return self * self
  def clamp(self, min=None, max=None):
    """torch.clamp: values below min become min, above max become max (max wins where min > max). The gradient,
    as torch 2.14's derivatives.yaml: a scalar bound passes none at the bound itself (self gets it where
    min < x < max); tensor bounds keep the closed interval (self where min <= x <= max, min where x < min,
    max where x > max or max < min)."""
    if min is None and max is None: raise TensorError("clamp: at least one of min and max must not be None")
    x = self
    if min is not None: x = where(x <= min if not isinstance(min, Tensor) else x < min, min, x)
    if max is not None: x = where(x >= max if not isinstance(max, Tensor) else x > max, max, x)
    return x
  clip = clamp

  # ---- reductions (dim= or its alias axis=, as torch takes both) ----
  def _axes(self, dim):
    if dim is None: return tuple(range(self.ndim))
    axes = (dim,) if isinstance(dim, int) else tuple(dim)
    for a in axes:
      if not -max(self.ndim, 1) <= a < max(self.ndim, 1):
        raise IndexError(f"dimension {a} out of range for shape {_shape_str(self.shape)} (expected in [{-max(self.ndim, 1)}, {max(self.ndim, 1) - 1}])")
    return tuple(sorted(set(a % max(self.ndim, 1) for a in axes)))

  def _reduce(self, fn, dim, keepdim):
    axes = self._axes(dim)
    if self.ndim == 0: return self
    out = fn.apply(self, axes=axes)
    return out if keepdim else out.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes))

  def sum(self, dim=None, keepdim=False, *, dtype=None, axis=None):
    x = self.cast(dtype) if dtype else (self.cast(dtypes.int32) if self.dtype in (dtypes.bool, dtypes.uint8, dtypes.int8) else self)
    return x._reduce(F.Sum, _dim(dim, axis), keepdim)
  def amax(self, dim=None, keepdim=False, *, axis=None): return self._reduce(F.Max, _dim(dim, axis), keepdim)
  def amin(self, dim=None, keepdim=False, *, axis=None): return self._reverse_order().amax(_dim(dim, axis), keepdim)._reverse_order()
  def max(self, dim=None, keepdim=False, *, axis=None):
    """torch's max: the largest value (no dim); (values, indices) along an int dim; elementwise with a tensor."""
    if isinstance(dim, Tensor): return self.maximum(dim)
    dim = _dim(dim, axis)
    if dim is None: return self.amax()
    if not isinstance(dim, int): raise TypeError(f"max: dim must be an int, got {dim!r} (amax takes several)")
    return _max_with_index(self, dim, keepdim)
  def min(self, dim=None, keepdim=False, *, axis=None):
    """torch's min: the smallest value (no dim); (values, indices) along an int dim; elementwise with a tensor."""
    if isinstance(dim, Tensor): return self.minimum(dim)
    dim = _dim(dim, axis)
    if dim is None: return self.amin()
    if not isinstance(dim, int): raise TypeError(f"min: dim must be an int, got {dim!r} (amin takes several)")
    values, indices = _max_with_index(self._reverse_order(), dim, keepdim)
    return ValuesIndices(values._reverse_order(), indices)
  def argmax(self, dim=None, keepdim=False, *, axis=None):
    """The index of the first largest value along dim (of the flattened tensor without dim), int32."""
    dim = _dim(dim, axis)
    if dim is None: return _max_with_index(self.reshape(-1), 0, False).indices.reshape((1,) * self.ndim if keepdim else ())
    return _max_with_index(self, dim, keepdim).indices
  def argmin(self, dim=None, keepdim=False, *, axis=None): return self._reverse_order().argmax(_dim(dim, axis), keepdim)
  def mean(self, dim=None, keepdim=False, *, dtype=None, axis=None):
    dim = _dim(dim, axis)
    x = self.cast(dtype) if dtype else self._float()
    n = math.prod(self.shape[a] for a in self._axes(dim)) if self.ndim else 1
    return x.sum(dim, keepdim) * (1.0 / max(n, 1))
  def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None):
    """torch's var: divides by n - correction (default 1); unbiased=False means correction 0."""
    if isinstance(dim, bool): dim, unbiased = None, dim           # var(unbiased)
    if unbiased is not None and correction is not None: raise TypeError("var: pass unbiased or correction, not both")
    correction = correction if correction is not None else (0 if unbiased is False else 1)
    dim = _dim(dim, axis)
    n = math.prod(self.shape[a] for a in self._axes(dim)) if self.ndim else 1
    d = self._float() - self._float().mean(dim, keepdim=True)
    return (d * d).sum(dim, keepdim) / max(n - correction, 0)     # nothing left to divide by: inf or NaN, as torch
  def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None):
    return self.var(dim, unbiased, keepdim, correction=correction, axis=axis).sqrt()
  def logsumexp(self, dim=None, keepdim=False, *, axis=None):
    dim = _dim(dim, axis)
    m = self.amax(dim, keepdim=True).detach()
    m = where(m.abs() == math.inf, 0.0, m)   # as torch: an infinite maximum is not subtracted (rows of -inf give -inf, +inf gives +inf)
    out = (self - m).exp().sum(dim, keepdim=True).log() + m
    return out if keepdim else out.reshape(tuple(s for i, s in enumerate(self.shape) if i not in self._axes(dim)))
  def any(self, dim=None, keepdim=False, *, axis=None): return self.bool().cast(dtypes.int32).amax(_dim(dim, axis), keepdim).bool()
  def all(self, dim=None, keepdim=False, *, axis=None): return self.bool().logical_not().any(_dim(dim, axis), keepdim).logical_not()

  def softmax(self, dim=None, dtype=None, *, axis=None):
    x, dim = (self.cast(dtype) if dtype else self), _dim(dim, axis)
    dim = -1 if dim is None else dim
    e = (x - x.amax(dim, keepdim=True).detach()).exp()
    return e / e.sum(dim, keepdim=True)
  def log_softmax(self, dim=None, dtype=None, *, axis=None):
    x, dim = (self.cast(dtype) if dtype else self), _dim(dim, axis)
    dim = -1 if dim is None else dim
    m = x - x.amax(dim, keepdim=True).detach()
    return m - m.exp().sum(dim, keepdim=True).log()

  # ---- movement ----
  def reshape(self, *shape) -> Tensor:
    shape = _shape_arg(shape)
    if shape.count(-1) > 1: raise TensorError(f"reshape: only one -1 allowed in {shape}")
    if -1 in shape:
      rest = math.prod(s for s in shape if s != -1)
      if rest == 0 or self.numel() % rest: raise TensorError(f"reshape: cannot reshape {_shape_str(self.shape)} into {_shape_str(shape)}")
      shape = tuple(self.numel() // rest if s == -1 else s for s in shape)
    if math.prod(shape) != self.numel(): raise TensorError(f"reshape: cannot reshape {_shape_str(self.shape)} ({self.numel()} elements) into {_shape_str(shape)}")
    return self if shape == self.shape else F.Reshape.apply(self, shape=shape)
  def view(self, *shape) -> Tensor:
    """reshape: every movement op is a view here, so a view of a non-contiguous tensor works too (torch refuses)."""
    if len(shape) == 1 and not isinstance(shape[0], (int, tuple, list)):
      raise NotImplementedError(f"view({shape[0]!r}): reinterpreting the bits as another dtype is not supported; cast() converts values")
    return self.reshape(*shape)
  def view_as(self, other: Tensor): return self.reshape(other.shape)
  reshape_as = view_as
  def flatten(self, start_dim=0, end_dim=-1):
    if not self.ndim: return self.reshape(1)
    start, end = self._axes(start_dim)[0], self._axes(end_dim)[0]
    return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])
  def unsqueeze(self, dim):
    if not -self.ndim - 1 <= dim <= self.ndim: raise IndexError(f"unsqueeze: dimension {dim} out of range for {self.ndim + 1} dimensions")
    dim = dim % (self.ndim + 1)
    return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])
  def squeeze(self, dim=None):
    """Drop the size-1 axes among dim (an int or a tuple; all axes if None); others stay."""
    axes = self._axes(dim)
    return self.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes or s != 1))
  def permute(self, *order):
    order = tuple(o % self.ndim for o in _shape_arg(order))
    if sorted(order) != list(range(self.ndim)): raise TensorError(f"permute: {order} is not a permutation of the {self.ndim} axes of {_shape_str(self.shape)}")
    return F.Permute.apply(self, order=order)
  def transpose(self, dim0=-2, dim1=-1):
    order = list(range(self.ndim)); a, b = self._axes(dim0)[0], self._axes(dim1)[0]
    order[a], order[b] = order[b], order[a]
    return self.permute(order)
  swapaxes = transpose
  def movedim(self, source, destination):
    src = [self._axes(s)[0] for s in ((source,) if isinstance(source, int) else source)]
    dst = [self._axes(d)[0] for d in ((destination,) if isinstance(destination, int) else destination)]
    rest = iter(a for a in range(self.ndim) if a not in src)
    at = dict(zip(dst, src))
    return self.permute([at[i] if i in at else next(rest) for i in range(self.ndim)])
  @property
  def T(self):
    """All axes reversed, as torch's T (mT swaps the last two)."""
    return self.permute(tuple(range(self.ndim))[::-1]) if self.ndim >= 2 else self
  @property
  def mT(self): return self.transpose(-2, -1)
  def expand(self, *shape):
    shape = _shape_arg(shape)
    x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape) if len(shape) > self.ndim else self
    shape = tuple(s if n == -1 else n for s, n in zip(x.shape, shape))
    for s, n in zip(x.shape, shape):
      if s != n and s != 1: raise TensorError(f"expand: cannot expand {_shape_str(self.shape)} to {_shape_str(shape)}")
    return x if shape == x.shape else F.Expand.apply(x, shape=shape)
  def expand_as(self, other: Tensor): return self.expand(other.shape)
  def repeat(self, *sizes):
    """Tile the tensor sizes[i] times along axis i (torch.repeat; len(sizes) >= ndim, new axes lead)."""
    sizes = _shape_arg(sizes)
    if len(sizes) < self.ndim: raise TensorError(f"repeat: {len(sizes)} repeat counts for a tensor of {self.ndim} dimensions")
    shape = (1,) * (len(sizes) - self.ndim) + self.shape
    x = self.reshape(tuple(d for s in shape for d in (1, s))).expand(tuple(d for r, s in zip(sizes, shape) for d in (r, s)))
    return x.reshape(tuple(r * s for r, s in zip(sizes, shape)))
  def pad(self, padding, value=0.0):
    """padding: ((before, after), ...) per axis, or a flat torch-style tuple for the last axes."""
    if padding and not isinstance(padding[0], (tuple, list)):
      pairs = [(padding[i], padding[i + 1]) for i in range(0, len(padding), 2)]
      padding = [(0, 0)] * (self.ndim - len(pairs)) + pairs[::-1]
    padding = tuple(tuple(p) for p in padding)
    if any(b < 0 or a < 0 for b, a in padding):
      x = self.shrink(tuple((-min(b, 0), s + min(a, 0)) for (b, a), s in zip(padding, self.shape)))
      return x.pad(tuple((max(b, 0), max(a, 0)) for b, a in padding), value)
    out = F.Pad.apply(self, arg=padding)
    if value != 0: out = out.where(F.Pad.apply(Tensor.full(self.shape, True, dtype=dtypes.bool, device=self.device), arg=padding), value)
    return out
  def shrink(self, arg):
    arg = tuple((0, s) if a is None else tuple(a) for a, s in zip(arg, self.shape))
    for (lo, hi), s in zip(arg, self.shape):
      if not 0 <= lo <= hi <= s: raise IndexError(f"shrink: range {lo}:{hi} out of bounds for size {s}")
    return F.Shrink.apply(self, arg=arg)
  def flip(self, *dims):
    """Reverse the order along dims (ints, or one tuple/list of them)."""
    dims = dims[0] if len(dims) == 1 and not isinstance(dims[0], int) else dims
    return F.Flip.apply(self, axes=self._axes(dims))

  def __getitem__(self, idx):
    """torch's indexing (see indexing.py); a bool mask index realizes the mask."""
    return getitem(self, idx)

  @staticmethod
  def cat(tensors, dim=0):
    t0 = tensors[0]; dim = dim % t0.ndim
    for t in tensors[1:]:
      if t.ndim != t0.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, t0.shape)) if i != dim):
        raise TensorError(f"cat: shapes {', '.join(_shape_str(t.shape) for t in tensors)} differ outside dim {dim}")
    total = sum(t.shape[dim] for t in tensors)
    out, off = None, 0
    for t in tensors:
      p = [(0, 0)] * t.ndim; p[dim] = (off, total - off - t.shape[dim]); off += t.shape[dim]
      x = t.pad(tuple(p))
      out = x if out is None else out + x
    return out
  def cat_with(self, *others, dim=0): return Tensor.cat([self, *others], dim)
  @staticmethod
  def stack(tensors, dim=0):
    dim = dim % (tensors[0].ndim + 1)
    return Tensor.cat([t.unsqueeze(dim) for t in tensors], dim)
  def split(self, sizes, dim=0):
    dim = dim % self.ndim
    if isinstance(sizes, int): sizes = [min(sizes, self.shape[dim] - i) for i in range(0, self.shape[dim], sizes)]
    if sum(sizes) != self.shape[dim]: raise TensorError(f"split: sizes {sizes} do not add up to {self.shape[dim]}")
    out, off = [], 0
    for s in sizes:
      out.append(self.shrink(tuple((off, off + s) if i == dim else (0, n) for i, n in enumerate(self.shape)))); off += s
    return out
  def chunk(self, n, dim=0): return self.split(math.ceil(self.shape[dim % self.ndim] / n), dim)

  def gather(self, dim, index: Tensor) -> Tensor:
    """out[..., i, ...] = self[..., index[..., i, ...], ...] along `dim` (torch.gather semantics)."""
    dim = dim % self.ndim
    n = self.shape[dim]
    xl, il = self.transpose(dim, -1), index.transpose(dim, -1)
    xl = xl.shrink(tuple((0, s) for s in il.shape[:-1]) + ((0, n),))
    onehot = il.unsqueeze(-1) == _ramp(n, self.device).reshape((1,) * il.ndim + (n,))
    out = xl.unsqueeze(-2).expand(onehot.shape).where(onehot, 0).sum(-1, dtype=self.dtype)
    return out.transpose(dim, -1)

  # ---- linear algebra ----
  def matmul(self, w: Tensor) -> Tensor:
    x = self
    if x.ndim == 0 or w.ndim == 0: raise TensorError("matmul: both operands need at least one dimension")
    if x.shape[-1] != w.shape[-2 if w.ndim > 1 else -1]:
      raise TensorError(f"matmul: {_shape_str(x.shape)} @ {_shape_str(w.shape)}: inner dimensions {x.shape[-1]} and {w.shape[-2 if w.ndim > 1 else -1]} differ")
    if x.device != w.device: raise TensorError(f"matmul: operands on different devices ({x.device} and {w.device})")
    dt = promote(x.dtype, w.dtype)
    x, w = x.cast(dt), w.cast(dt)
    vec_x, vec_w = x.ndim == 1, w.ndim == 1
    if vec_x: x = x.unsqueeze(0)
    if vec_w: w = w.unsqueeze(-1)
    try: batch = broadcast_shape(x.shape[:-2], w.shape[:-2])
    except TensorError: raise TensorError(f"matmul: batch dimensions of {_shape_str(self.shape)} and {_shape_str(w.shape)} cannot be broadcast together") from None
    M, K, N = x.shape[-2], x.shape[-1], w.shape[-1]
    xa = x.expand_to(batch + (M, K)).reshape(batch + (M, 1, K)).expand(batch + (M, N, K))
    wa = w.expand_to(batch + (K, N)).transpose(-1, -2).reshape(batch + (1, N, K)).expand(batch + (M, N, K))
    out = (xa * wa).sum(-1)
    if vec_x: out = out.squeeze(-2)
    if vec_w: out = out.squeeze(-1)
    return out
  def dot(self, other: Tensor) -> Tensor:
    if self.ndim != 1 or other.ndim != 1: raise TensorError(f"dot: 1-d tensors expected, got shapes {_shape_str(self.shape)} and {_shape_str(other.shape)}")
    return self.matmul(other)

  def linear(self, weight, bias=None):
    """x @ weight.T + bias (weight is (out, in), as in torch and Hugging Face checkpoints). Leading axes are
    folded into one, so the weight's gradient is one matrix product, not a batch of them summed."""
    from . import precision
    precision.note("linear", promote(self.dtype, weight.dtype))
    x = self.reshape(-1, self.shape[-1]) if self.ndim > 2 else self
    out = x @ weight.T
    if self.ndim > 2: out = out.reshape(*self.shape[:-1], weight.shape[0])
    return out + bias if bias is not None else out

  # composite nn ops live in functional.py; attached below
  def dropout(self, p=0.5):
    if not Tensor.training or p == 0: return self
    keep = Tensor.rand(*self.shape, device=self.device) >= p
    return (self * (1.0 / (1 - p))).where(keep, 0.0)


def _graph_order(roots: list[Tensor]) -> list[Tensor]:
  """The tensors with an autograd context that the roots depend on (the roots included), each after its
  parents. A loop, not a recursive closure: a closure that calls itself is a reference cycle, and this list
  would keep every activation of the step alive until the garbage collector happened to run."""
  order, seen = [], set()
  for root in roots:
    if root._ctx is None or id(root) in seen: continue
    seen.add(id(root))
    stack = [(root, iter(root._ctx.parents))]
    while stack:   # depth first, parents in order, each tensor after all of its parents
      t, parents = stack[-1]
      p = next(parents, None)
      if p is None:
        stack.pop(); order.append(t)
      elif id(p) not in seen and p._ctx is not None:
        seen.add(id(p)); stack.append((p, iter(p._ctx.parents)))
  return order


def backward(roots: list[Tensor], gradients: list[Tensor]):
  """Reverse mode from several roots at once, each with its gradient: leaves get `.grad` (added to what is
  there), the graph's contexts are released."""
  order = _graph_order(roots)
  grads = {}
  for r, g in zip(roots, gradients):
    assert g.shape == r.shape, f"gradient of shape {g.shape} for a tensor of shape {r.shape}"
    if r._ctx is None and r.requires_grad:   # backward on a leaf (e.g. the sum of a 0-d tensor is itself)
      r.grad = g if r.grad is None else r.grad + g
    grads[id(r)] = g.lazydata if id(r) not in grads else grads[id(r)].alu(Op.ADD, g.lazydata)
  # a context with several outputs (ctx.outputs: weak references, e.g. a collective's) is called once, with the
  # list of its outputs' gradients (None where one got none), after the last of its outputs in `order`
  multi = {}
  for t in order:
    if hasattr(t._ctx, "outputs"): multi.setdefault(id(t._ctx), [0, [None] * len(t._ctx.outputs)])[0] += 1
  for t in reversed(order):
    g, ctx = grads.pop(id(t), None), t._ctx
    if id(ctx) in multi:
      waiting = multi[id(ctx)]
      if g is not None: waiting[1][next(i for i, r in enumerate(ctx.outputs) if r() is t)] = g
      waiting[0] -= 1
      g = waiting[1] if waiting[0] == 0 and any(x is not None for x in waiting[1]) else None
    if g is None: continue
    gs = ctx.backward(g)
    if not isinstance(gs, tuple): gs = (gs,)
    for p, pg in zip(ctx.parents, gs):
      if pg is None or not p.requires_grad: continue
      assert pg.shape == p.shape, f"gradient shape {pg.shape} != {p.shape} in {type(ctx).__name__}"
      if p._ctx is None:   # leaf: a .grad that owns its buffer is added to in place (a sum over micro-batches)
        pt = Tensor(pg)
        if p.grad is None: p.grad = pt
        elif p.grad.lazydata.op is Op.ASSIGN or (p.grad.lazydata.op is Op.BUFFER and p.grad.lazydata.realized): p.grad.assign(p.grad + pt)
        else: p.grad = p.grad + pt
      else:
        grads[id(p)] = pg if id(p) not in grads else grads[id(p)].alu(Op.ADD, pg)
    t._ctx = None


def _shape_arg(shape):
  if len(shape) == 1 and isinstance(shape[0], (tuple, list)): shape = tuple(shape[0])
  return tuple(int(s) for s in shape)


_ramps: dict = {}


def _ramp(n, device) -> Tensor:
  """[0, 1, ..., n-1] as int32 on `device` (uploaded once per size and device)."""
  key = (n, canonical(device))
  if key not in _ramps: _ramps[key] = Tensor(np.arange(n, dtype=np.int32), device=key[1])
  return _ramps[key]


def _as_dtype(d) -> DType | None:
  """d as a DType if it names one (a DType, a dtype name, a numpy dtype), else None."""
  if isinstance(d, str): return dtypes.by_name.get(d)
  try: return dtypes.get(d)
  except TypeError: return None


def _max_with_index(x: Tensor, dim: int, keepdim: bool) -> ValuesIndices:
  """The largest values along dim and the index of the first of them (int32), as torch.max(x, dim)."""
  if x.ndim == 0:
    x._axes(dim)
    return ValuesIndices(x, Tensor.full((), 0, dtype=dtypes.int32, device=x.device))
  dim = x._axes(dim)[0]
  n = x.shape[dim]
  m = x.amax(dim, keepdim=True)
  idx = _ramp(n, x.device).reshape([n if i == dim else 1 for i in range(x.ndim)])
  top = (x == m.detach()) | (x != x) if x.dtype.is_float else x == m.detach()   # a NaN is the largest (m is NaN then)
  first = (n - 1 - (n - 1 - idx).where(top, -1).amax(dim, keepdim=True)).cast(dtypes.int32)
  # The values' gradient goes to that one index, as torch's value_selecting_reduction_backward (ties are not shared,
  # unlike amax's). Adding -0.0 to one value leaves it exact, -0.0 and infinities included.
  if x.requires_grad: m = x.where(idx == first, -0.0).sum(dim, keepdim=True)
  return ValuesIndices(m, first) if keepdim else ValuesIndices(m.squeeze(dim), first.squeeze(dim))


def where(condition: Tensor, x, y) -> Tensor:
  """torch.where(condition, x, y): x where condition else y; x and y are Tensors or Python scalars, all three
  broadcast together. A condition that is not bool counts as true where it is nonzero."""
  c = condition if condition.dtype is dtypes.bool else condition != 0
  if not isinstance(x, Tensor) and not isinstance(y, Tensor):
    x = Tensor(LazyBuffer.const(x, dtypes.float32 if isinstance(y, float) else scalar_dtype(x), (), c.device))
  if isinstance(x, Tensor): x, y = x._binop(y, "where")
  else: y, x = y._binop(x, "where")
  shape = broadcast_shape(c.shape, x.shape, op="where")
  return F.Where.apply(c.expand_to(shape), x.expand_to(shape), y.expand_to(shape))


def _pow_value(a: Tensor, b: Tensor) -> Tensor:
  """a ** b for float tensors of one shape, without a gradient of its own: exp(b log|a|); a negative base takes the sign
  of an odd integer exponent and gives NaN for a fractional one; x**0 and 1**y are 1 even where the formula gives
  NaN (0 log 0, inf log 1)."""
  mag = (b * a.abs().log()).exp()
  whole = b.trunc() == b
  out = where(a < 0, where(whole, where(whole & (b.abs().fmod(2) == 1), -mag, mag), math.nan), mag)
  return where(((b == 0) | (a == 1)) & (out != out), 1.0, out)


class _Pow(F.Function):
  """a ** b (floats) with torch's gradients (FunctionsManual.cpp pow_backward_self and pow_backward_exponent):
  the base's is 0 where b == 0, else b a**(b-1); the exponent's is 0 where a == 0 and b >= 0, else a**b log a.
  So a zero base gives finite gradients where the calculus would give 0 * inf (0**2, 0**1, 0**0)."""
  def forward(self, a, b):
    self.a, self.b = Tensor(a), Tensor(b)
    self.out = _pow_value(self.a, self.b)
    return self.out.lazydata
  def backward(self, g):
    a, b, g = self.a, self.b, Tensor(g)
    da = where(b == 0, 0.0, g * b * _pow_value(a, b - 1)).lazydata if self.needs_input_grad[0] else None
    db = (g * where((a == 0) & (b >= 0), 0.0, self.out * a.log())).lazydata if self.needs_input_grad[1] else None
    return da, db


class _Remainder(F.Function):
  """a - q b for a whole quotient q (floored for %, truncated for fmod), its value r and q computed exactly by the
  caller, with torch's gradients (derivatives.yaml, remainder and fmod): 1 for a, -q for b."""
  def forward(self, a, b, r, q): self.q = q; return r
  def backward(self, g): return g, g.alu(Op.MUL, self.q.alu(Op.NEG)), None, None


@contextmanager
def no_grad():
  prev, Tensor.no_grad = Tensor.no_grad, True
  try: yield
  finally: Tensor.no_grad = prev


@contextmanager
def train(mode=True):
  prev, Tensor.training = Tensor.training, mode
  try: yield
  finally: Tensor.training = prev


from .indexing import getitem   # noqa: E402  (indexing builds on Tensor)
