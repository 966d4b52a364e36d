"""Tensor: the user-facing, PyTorch-style array with reverse-mode autograd.

A Tensor wraps a LazyBuffer; ops only build the graph (function.py holds the primitive ops and their
gradients, everything else here composes them). `realize()`, `numpy()`, `item()` and `tolist()` run it.
Random numbers come from a counter-based generator (random.py) whose counter lives on the device.
"""
from __future__ import annotations
import math, weakref
from contextlib import contextmanager
import numpy as np
from .dtypes import dtypes, DType, promote, scalar_dtype, from_storage, to_storage
from .lazy import LazyBuffer
from .device import Buffer, canonical
from .ops import Op
from .realize import realize as _realize
from . import function as F


def _shape_str(s): return str(tuple(s))


def broadcast_shape(*shapes, op="op"):
  nd = max(len(s) for s in shapes)
  padded = [(1,) * (nd - len(s)) + tuple(s) for s in shapes]
  out = []
  for dims in zip(*padded):
    big = {d for d in dims if d != 1}
    if len(big) > 1: raise ValueError(f"{op}: shapes {' and '.join(_shape_str(s) for s in shapes)} cannot be broadcast together")
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
    if self.numel() != 1: raise ValueError(f"item() needs a tensor with one element, got shape {_shape_str(self.shape)}")
    return self.numpy().reshape(()).item()
  def tolist(self): return self.numpy().tolist()

  def detach(self) -> Tensor: return Tensor(self.lazydata)
  def to(self, device) -> Tensor:
    device = canonical(device)
    return self if device == self.device else F.Copy.apply(self, device=device)
  def cpu(self): return self.to("CPU:0")
  def contiguous(self): return F.Contiguous.apply(self)
  def clone(self): return Tensor(self.lazydata.contiguous() if self.lazydata.op is Op.VIEW else self.lazydata.alu(Op.ADD, self.lazydata.const_like(0)), requires_grad=False) if not self.requires_grad else self + 0

  def assign(self, x) -> Tensor:
    """Write x into this tensor's memory (in place). Used by optimizers so the JIT can replay updates."""
    x = x if isinstance(x, Tensor) else Tensor(x, device=self.device, dtype=self.dtype)
    if x.shape != self.shape: raise ValueError(f"assign: shape {_shape_str(x.shape)} does not match {_shape_str(self.shape)}")
    if x.device != self.device: raise ValueError(f"assign: value on {x.device}, tensor on {self.device}")
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

  @staticmethod
  def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    if stop is None: start, stop = 0, start
    n = max(0, math.ceil((stop - start) / step))
    dt = dtypes.get(dtype) if dtype else (dtypes.default_float if any(isinstance(x, float) for x in (start, stop, step)) else dtypes.default_int)
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
  def randint(low, high=None, shape=(), dtype=None, device=None) -> Tensor:
    if high is None: low, high = 0, low
    return (Tensor.rand(*_shape_arg(shape), device=device) * (high - low)).cast(dtypes.int32).clip(0, high - low - 1).cast(dtypes.get(dtype) if dtype else dtypes.int32) + low
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
      if self.numel() != 1: raise ValueError(f"backward() without a gradient needs a scalar, got shape {_shape_str(self.shape)}")
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
    if x.device != y.device: raise ValueError(f"{op_name}: tensors on different devices ({x.device} and {y.device})")
    shape = broadcast_shape(x.shape, y.shape, op=op_name)
    dt = promote(x.dtype, y.dtype)
    return x.cast(dt).expand_to(shape), y.cast(dt).expand_to(shape)

  def expand_to(self, shape):
    shape = tuple(shape)
    if self.shape == shape: return self
    x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape) if self.ndim < len(shape) else self
    return x.expand(shape)

  def add(self, y, reverse=False): return F.Add.apply(*self._binop(y, "add", reverse))
  def sub(self, y, reverse=False):
    a, b = self._binop(y, "sub", reverse)
    return F.Add.apply(a, F.Neg.apply(b))
  def mul(self, y, reverse=False): return F.Mul.apply(*self._binop(y, "mul", reverse))
  def div(self, y, reverse=False):
    a, b = self._binop(y, "div", reverse)
    if not a.dtype.is_float: a, b = a.cast(dtypes.float32), b.cast(dtypes.float32)
    return F.Mul.apply(a, F.Reciprocal.apply(b))
  def idiv(self, y, reverse=False):
    a, b = self._binop(y, "idiv", reverse)
    return Tensor(a.lazydata.alu(Op.IDIV, b.lazydata))
  def mod(self, y, reverse=False):
    a, b = self._binop(y, "mod", reverse)
    return Tensor(a.lazydata.alu(Op.MOD, b.lazydata))
  def pow(self, y, reverse=False):
    if not reverse and isinstance(y, (int, float)):
      if y == 2: return self * self
      if y == 1: return self
      if y == 0.5: return self.sqrt()
      if y == -1: return self.reciprocal()
      if isinstance(y, int) and y == 3: return self * self * self
    a, b = self._binop(y, "pow", reverse)
    if not a.dtype.is_float: a, b = a.cast(dtypes.float32), b.cast(dtypes.float32)
    # a**b = exp(b*log|a|), sign from odd integer exponents of negative bases
    mag = (b * a.abs().log()).exp()
    odd = ((b.abs() % 2) == 1) & (a < 0)
    return where(odd, -mag, mag)
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

  def _cmp(self, y, op, reverse=False, name="compare"):
    a, b = self._binop(y, name, reverse)
    return Tensor(a.lazydata.alu(op, b.lazydata))
  def __lt__(self, y): return self._cmp(y, Op.CMPLT, name="lt")
  def __gt__(self, y): return self._cmp(y, Op.CMPLT, True, name="gt")
  def __le__(self, y): return (self > y).logical_not()
  def __ge__(self, y): return (self < y).logical_not()
  def __eq__(self, y): return self._cmp(y, Op.CMPEQ, name="eq")          # type: ignore[override]
  def __ne__(self, y): return (self == y).logical_not()                # type: ignore[override]
  def logical_not(self): return Tensor(self.lazydata.alu(Op.CMPEQ, self.lazydata.const_like(0 if self.dtype is not dtypes.bool else False)))
  def _bit(self, y, op, name, reverse=False):
    a, b = self._binop(y, name, reverse)
    return Tensor(a.lazydata.alu(op, b.lazydata))
  def __and__(self, y): return self._bit(y, Op.AND, "and")
  def __or__(self, y): return self._bit(y, Op.OR, "or")
  def __xor__(self, y): return self._bit(y, Op.XOR, "xor")
  def __lshift__(self, y): return self._bit(y, Op.SHL, "shl")
  def __rshift__(self, y): return self._bit(y, Op.SHR, "shr")
  __hash__ = object.__hash__

  __add__ = add; __mul__ = mul; __sub__ = sub; __truediv__ = div; __pow__ = pow; __floordiv__ = idiv; __mod__ = mod
  def __radd__(self, y): return self.add(y, True)
  def __rsub__(self, y): return self.sub(y, True)
  def __rmul__(self, y): return self.mul(y, True)
  def __rtruediv__(self, y): return self.div(y, True)
  def __rpow__(self, y): return self.pow(y, True)
  def __neg__(self): return F.Neg.apply(self) if self.dtype is not dtypes.bool else self.logical_not()
  def __matmul__(self, y): return self.matmul(y)
  def __rmatmul__(self, y): return Tensor(y, device=self.device).matmul(self) if not isinstance(y, Tensor) else y.matmul(self)
  def __iadd__(self, y): return self.assign(self + y)
  def __isub__(self, y): return self.assign(self - y)
  def __imul__(self, y): return self.assign(self * y)

  def cast(self, dtype) -> Tensor:
    dtype = dtypes.get(dtype)
    return self if dtype == self.dtype else F.Cast.apply(self, dtype=dtype)
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
  def relu(self): return self.where(self > 0, 0.0 if self.dtype.is_float else 0)
  def leaky_relu(self, slope=0.01): return self.where(self > 0, self * slope)
  def gelu(self): return 0.5 * self * (1 + (math.sqrt(2 / math.pi) * (self + 0.044715 * self * self * self)).tanh())
  def silu(self): return self * self.sigmoid()
  def swish(self): return self.silu()
  def abs(self): return where(self < 0, -self, self)
  def sign(self): return (self > 0).cast(self.dtype) - (self < 0).cast(self.dtype)
  def square(self): return self * self
  def clip(self, lo=None, hi=None):
    x = self
    if lo is not None: x = x.maximum(lo)
    if hi is not None: x = x.minimum(hi)
    return x
  clamp = clip

  # ---- reductions ----
  def _axes(self, axis):
    if axis is None: return tuple(range(self.ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
      if not -max(self.ndim, 1) <= a < max(self.ndim, 1): raise IndexError(f"axis {a} out of range for shape {_shape_str(self.shape)}")
    return tuple(sorted(set(a % max(self.ndim, 1) for a in axes)))

  def _reduce(self, fn, axis, keepdim):
    axes = self._axes(axis)
    if self.ndim == 0: return self
    out = fn.apply(self, axes=axes)
    return out if keepdim else out.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes))

  def sum(self, axis=None, keepdim=False, dtype=None):
    x = self.cast(dtype) if dtype else (self.cast(dtypes.int32) if self.dtype in (dtypes.bool, dtypes.uint8, dtypes.int8) else self)
    return x._reduce(F.Sum, axis, keepdim)
  def max(self, axis=None, keepdim=False): return self._reduce(F.Max, axis, keepdim)
  def min(self, axis=None, keepdim=False): return self._reverse_order().max(axis, keepdim)._reverse_order()
  def mean(self, axis=None, keepdim=False):
    n = math.prod(self.shape[a] for a in self._axes(axis)) if self.ndim else 1
    return self._float().sum(axis, keepdim) * (1.0 / max(n, 1))
  def var(self, axis=None, keepdim=False, correction=1):
    n = math.prod(self.shape[a] for a in self._axes(axis)) if self.ndim else 1
    d = self._float() - self._float().mean(axis, keepdim=True)
    return (d * d).sum(axis, keepdim) * (1.0 / max(n - correction, 1))
  def std(self, axis=None, keepdim=False, correction=1): return self.var(axis, keepdim, correction).sqrt()
  def logsumexp(self, axis=None, keepdim=False):
    m = self.max(axis, keepdim=True).detach()
    out = (self - m).exp().sum(axis, keepdim=True).log() + m
    return out if keepdim else out.reshape(tuple(s for i, s in enumerate(self.shape) if i not in self._axes(axis)))
  def argmax(self, axis=None, keepdim=False):
    if axis is None: return self.reshape(-1).argmax(0)
    axis = self._axes(axis)[0]
    n = self.shape[axis]
    m = self == self.max(axis, keepdim=True)
    idx = _ramp(n, self.device).reshape([n if i == axis else 1 for i in range(self.ndim)])
    return (n - 1 - (n - 1 - idx).where(m, -1).max(axis, keepdim)).cast(dtypes.int32)
  def argmin(self, axis=None, keepdim=False): return self._reverse_order().argmax(axis, keepdim)
  def any(self, axis=None, keepdim=False): return self.bool().cast(dtypes.int32).max(axis, keepdim).bool()
  def all(self, axis=None, keepdim=False): return self.bool().logical_not().any(axis, keepdim).logical_not()

  def softmax(self, axis=-1):
    e = (self - self.max(axis, keepdim=True).detach()).exp()
    return e / e.sum(axis, keepdim=True)
  def log_softmax(self, axis=-1):
    m = self - self.max(axis, keepdim=True).detach()
    return m - m.exp().sum(axis, keepdim=True).log()

  # ---- movement ----
  def reshape(self, *shape) -> Tensor:
    shape = _shape_arg(shape)
    if shape.count(-1) > 1: raise ValueError(f"reshape: only one -1 allowed in {shape}")
    if -1 in shape:
      rest = math.prod(s for s in shape if s != -1)
      if rest == 0 or self.numel() % rest: raise ValueError(f"reshape: cannot reshape {_shape_str(self.shape)} into {_shape_str(shape)}")
      shape = tuple(self.numel() // rest if s == -1 else s for s in shape)
    if math.prod(shape) != self.numel(): raise ValueError(f"reshape: cannot reshape {_shape_str(self.shape)} ({self.numel()} elements) into {_shape_str(shape)}")
    return self if shape == self.shape else F.Reshape.apply(self, shape=shape)
  view = reshape
  def flatten(self, start_dim=0, end_dim=-1):
    end = end_dim % max(self.ndim, 1)
    return self.reshape(self.shape[:start_dim] + (-1,) + self.shape[end + 1:]) if self.ndim else self.reshape(1)
  def unsqueeze(self, dim):
    dim = dim % (self.ndim + 1)
    return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])
  def squeeze(self, dim=None):
    if dim is None: return self.reshape(tuple(s for s in self.shape if s != 1))
    dim = dim % max(self.ndim, 1)
    return self if self.shape[dim] != 1 else self.reshape(self.shape[:dim] + self.shape[dim + 1:])
  def permute(self, *order):
    order = tuple(o % self.ndim for o in _shape_arg(order))
    if sorted(order) != list(range(self.ndim)): raise ValueError(f"permute: {order} is not a permutation of the {self.ndim} axes of {_shape_str(self.shape)}")
    return F.Permute.apply(self, order=order)
  def transpose(self, a=-2, b=-1):
    order = list(range(self.ndim)); a, b = a % self.ndim, b % self.ndim
    order[a], order[b] = order[b], order[a]
    return self.permute(order)
  @property
  def T(self): return self.transpose() if self.ndim >= 2 else self
  def expand(self, *shape):
    shape = _shape_arg(shape)
    x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape) if len(shape) > self.ndim else self
    shape = tuple(s if n == -1 else n for s, n in zip(x.shape, shape))
    for s, n in zip(x.shape, shape):
      if s != n and s != 1: raise ValueError(f"expand: cannot expand {_shape_str(self.shape)} to {_shape_str(shape)}")
    return x if shape == x.shape else F.Expand.apply(x, shape=shape)
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
  def flip(self, axis):
    axes = self._axes(axis)
    return F.Flip.apply(self, axes=axes)

  def __getitem__(self, idx):
    return _getitem(self, idx)

  @staticmethod
  def cat(tensors, dim=0):
    t0 = tensors[0]; dim = dim % t0.ndim
    for t in tensors[1:]:
      if t.ndim != t0.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, t0.shape)) if i != dim):
        raise ValueError(f"cat: shapes {', '.join(_shape_str(t.shape) for t in tensors)} differ outside dim {dim}")
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
    if sum(sizes) != self.shape[dim]: raise ValueError(f"split: sizes {sizes} do not add up to {self.shape[dim]}")
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
    if x.ndim == 0 or w.ndim == 0: raise ValueError("matmul: both operands need at least one dimension")
    if x.shape[-1] != w.shape[-2 if w.ndim > 1 else -1]:
      raise ValueError(f"matmul: {_shape_str(x.shape)} @ {_shape_str(w.shape)}: inner dimensions {x.shape[-1]} and {w.shape[-2 if w.ndim > 1 else -1]} differ")
    if x.device != w.device: raise ValueError(f"matmul: operands on different devices ({x.device} and {w.device})")
    dt = promote(x.dtype, w.dtype)
    x, w = x.cast(dt), w.cast(dt)
    vec_x, vec_w = x.ndim == 1, w.ndim == 1
    if vec_x: x = x.unsqueeze(0)
    if vec_w: w = w.unsqueeze(-1)
    try: batch = broadcast_shape(x.shape[:-2], w.shape[:-2])
    except ValueError: raise ValueError(f"matmul: batch dimensions of {_shape_str(self.shape)} and {_shape_str(w.shape)} cannot be broadcast together") from None
    M, K, N = x.shape[-2], x.shape[-1], w.shape[-1]
    xa = x.expand_to(batch + (M, K)).reshape(batch + (M, 1, K)).expand(batch + (M, N, K))
    wa = w.expand_to(batch + (K, N)).transpose(-1, -2).reshape(batch + (1, N, K)).expand(batch + (M, N, K))
    out = (xa * wa).sum(-1)
    if vec_x: out = out.squeeze(-2)
    if vec_w: out = out.squeeze(-1)
    return out
  dot = matmul

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
      if p._ctx is None:   # leaf
        pt = Tensor(pg)
        p.grad = pt if p.grad is None else p.grad + pt
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


def _getitem(t: Tensor, idx):
  if not isinstance(idx, tuple): idx = (idx,)
  tensor_axes = []
  n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
  if n_real > t.ndim: raise IndexError(f"too many indices ({n_real}) for tensor of shape {_shape_str(t.shape)}")
  expanded = []
  for i in idx:
    if i is Ellipsis: expanded += [slice(None)] * (t.ndim - n_real)
    else: expanded.append(i)
  if not any(i is Ellipsis for i in idx): expanded += [slice(None)] * (t.ndim - n_real)
  x, dim, out_dims = t, 0, 0
  for i in expanded:
    if i is None:
      x = x.unsqueeze(out_dims); out_dims += 1; continue
    n = x.shape[out_dims]
    if isinstance(i, (int, np.integer)):
      i = int(i)
      if not -n <= i < n: raise IndexError(f"index {i} out of range for axis {dim} of size {n}")
      i %= n
      x = x.shrink(tuple((i, i + 1) if a == out_dims else (0, s) for a, s in enumerate(x.shape)))
      x = x.reshape(x.shape[:out_dims] + x.shape[out_dims + 1:])
    elif isinstance(i, slice):
      start, stop, step = i.indices(n)
      if step < 0:
        x = x.flip(out_dims)
        start, stop, step = n - 1 - start, n - 1 - stop, -step
      length = max(0, math.ceil((stop - start) / step))
      x = x.shrink(tuple((start, min(n, start + length * step)) if a == out_dims else (0, s) for a, s in enumerate(x.shape)))
      if step > 1 and length > 0:
        sz = x.shape[out_dims]
        x = x.pad(tuple((0, length * step - sz) if a == out_dims else (0, 0) for a in range(x.ndim)))
        x = x.reshape(x.shape[:out_dims] + (length, step) + x.shape[out_dims + 1:])
        x = x.shrink(tuple((0, 1) if a == out_dims + 1 else (0, s) for a, s in enumerate(x.shape)))
        x = x.reshape(x.shape[:out_dims + 1] + x.shape[out_dims + 2:])
      out_dims += 1
    elif isinstance(i, (Tensor, list, np.ndarray)):
      it = i if isinstance(i, Tensor) else Tensor(np.asarray(i), device=t.device)
      if it.dtype.is_float: raise IndexError("tensor indices must be integers or bools")
      tensor_axes.append((out_dims, it)); out_dims += 1
    else: raise IndexError(f"unsupported index {i!r}")
    dim += 1
  if len(tensor_axes) > 1: raise IndexError("only one tensor index per indexing expression is supported")
  for ax, it in tensor_axes:
    n = x.shape[ax]
    it = where(it < 0, it + n, it)
    xm = x.permute((ax,) + tuple(a for a in range(x.ndim) if a != ax))                  # (n, *rest)
    rest = xm.shape[1:]
    oh = (it.unsqueeze(-1) == _ramp(n, t.device).reshape((1,) * it.ndim + (n,)))           # (*idx, n)
    if x.dtype.is_float: oh = oh.cast(x.dtype)      # a one-hot product: runs as a matrix product
    oh = oh.reshape(oh.shape + (1,) * len(rest)).expand(oh.shape + rest)
    xe = xm.reshape((1,) * it.ndim + xm.shape).expand(oh.shape)
    res = (oh * xe if x.dtype.is_float else xe.where(oh, 0)).sum(it.ndim, dtype=x.dtype)   # (*idx, *rest)
    k = it.ndim
    x = res.permute(tuple(range(k, k + ax)) + tuple(range(k)) + tuple(range(k + ax, k + len(rest))))
  return x


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
