"""Autograd Functions: the forward of each primitive op on LazyBuffers and its gradient rule.
Every differentiable Tensor op is one of these or a composition of them."""
from __future__ import annotations
import math
from .ops import Op
from .lazy import LazyBuffer


class Function:
  def __init__(self, *tensors):
    self.needs_input_grad = [t.requires_grad for t in tensors]
    self.requires_grad = any(self.needs_input_grad)

  def forward(self, *args, **kwargs): raise NotImplementedError
  def backward(self, grad: LazyBuffer): raise NotImplementedError

  @classmethod
  def apply(cls, *tensors, **kwargs):
    from .tensor import Tensor
    ctx = cls(*tensors)
    out = Tensor(ctx.forward(*[t.lazydata for t in tensors], **kwargs), requires_grad=ctx.requires_grad and not Tensor.no_grad)
    if out.requires_grad: ctx.parents = tensors; out._ctx = ctx
    return out


# ---- unary ----
class Cast(Function):
  def forward(self, x, dtype): self.in_dtype = x.dtype; return x.cast(dtype)
  def backward(self, g): return g.cast(self.in_dtype)

class Neg(Function):
  def forward(self, x): return x.alu(Op.NEG)
  def backward(self, g): return g.alu(Op.NEG)

class Reciprocal(Function):
  def forward(self, x): self.ret = x.alu(Op.RECIP); return self.ret
  def backward(self, g): return g.alu(Op.NEG).alu(Op.MUL, self.ret.alu(Op.MUL, self.ret))

class Sqrt(Function):
  def forward(self, x): self.ret = x.alu(Op.SQRT); return self.ret
  def backward(self, g): return g.alu(Op.MUL, self.ret.alu(Op.MUL, self.ret.const_like(2)).alu(Op.RECIP))

class Exp(Function):   # e**x = 2**(x*log2(e))
  def forward(self, x): self.ret = x.alu(Op.MUL, x.const_like(1 / math.log(2))).alu(Op.EXP2); return self.ret
  def backward(self, g): return g.alu(Op.MUL, self.ret)

class Log(Function):   # ln x = log2(x)*ln(2)
  def forward(self, x): self.x = x; return x.alu(Op.LOG2).alu(Op.MUL, x.const_like(math.log(2)))
  def backward(self, g): return g.alu(Op.MUL, self.x.alu(Op.RECIP))

class Sin(Function):
  def forward(self, x): self.x = x; return x.alu(Op.SIN)
  def backward(self, g): return g.alu(Op.MUL, self.x.const_like(math.pi / 2).alu(Op.ADD, self.x.alu(Op.NEG)).alu(Op.SIN))

class Sigmoid(Function):
  def forward(self, x):
    e = x.alu(Op.MUL, x.const_like(-1 / math.log(2))).alu(Op.EXP2)
    self.ret = e.alu(Op.ADD, e.const_like(1)).alu(Op.RECIP); return self.ret
  def backward(self, g): return g.alu(Op.MUL, self.ret.alu(Op.MUL, self.ret.const_like(1).alu(Op.ADD, self.ret.alu(Op.NEG))))

class Abs(Function):   # |x| as x where 0 < x else 0 - x (so -0.0 gives +0.0); the gradient is sign(x), 0 at 0 as torch's
  def forward(self, x):
    self.x = x
    return x.const_like(0).alu(Op.CMPLT, x).alu(Op.WHERE, x, x.const_like(0).alu(Op.ADD, x.alu(Op.NEG)))
  def backward(self, g):
    zero = self.x.const_like(0)
    return g.alu(Op.MUL, zero.alu(Op.CMPLT, self.x).cast(g.dtype).alu(Op.ADD, self.x.alu(Op.CMPLT, zero).cast(g.dtype).alu(Op.NEG)))

def _horner(x: LazyBuffer, coeffs) -> LazyBuffer:
  """coeffs[0] + x * (coeffs[1] + x * (...))."""
  r = x.const_like(coeffs[-1])
  for c in reversed(coeffs[:-1]): r = r.alu(Op.MUL, x).alu(Op.ADD, x.const_like(c))
  return r

def _exp(x: LazyBuffer) -> LazyBuffer: return x.alu(Op.MUL, x.const_like(1 / math.log(2))).alu(Op.EXP2)

ERF_TAYLOR = tuple(2 / math.sqrt(math.pi) * c for c in (1, -1 / 3, 1 / 10, -1 / 42, 1 / 216, -1 / 1320))   # erf(x)/x in powers of x**2
ERFC_FIT = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)
ERF_SPLIT = 0.5   # below: the Taylor series (next term under 3e-8 of erf); above: 1 - erfc, erf >= 0.52 so no cancellation

class Erf(Function):
  """erf from the primitives: its Taylor series for |x| < ERF_SPLIT, else 1 - erfc(|x|) with the Chebyshev fit of
  Numerical Recipes (erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), relative error < 1.2e-7): float32-accurate."""
  def forward(self, x):
    self.x = x
    x2 = x.alu(Op.MUL, x)
    small = x.alu(Op.MUL, _horner(x2, ERF_TAYLOR))
    neg = x.alu(Op.CMPLT, x.const_like(0))
    z = neg.alu(Op.WHERE, x.alu(Op.NEG), x)
    t = x.const_like(1).alu(Op.ADD, z.alu(Op.MUL, x.const_like(0.5))).alu(Op.RECIP)
    big = x.const_like(1).alu(Op.ADD, t.alu(Op.MUL, _exp(x2.alu(Op.NEG).alu(Op.ADD, _horner(t, ERFC_FIT)))).alu(Op.NEG))
    return z.alu(Op.CMPLT, x.const_like(ERF_SPLIT)).alu(Op.WHERE, small, neg.alu(Op.WHERE, big.alu(Op.NEG), big))
  def backward(self, g): return g.alu(Op.MUL, _exp(self.x.alu(Op.MUL, self.x).alu(Op.NEG)).alu(Op.MUL, self.x.const_like(2 / math.sqrt(math.pi))))

# ---- binary ----
class Add(Function):
  def forward(self, x, y): return x.alu(Op.ADD, y)
  def backward(self, g): return g if self.needs_input_grad[0] else None, g if self.needs_input_grad[1] else None

class Mul(Function):
  def forward(self, x, y): self.x, self.y = x, y; return x.alu(Op.MUL, y)
  def backward(self, g):
    return (g.alu(Op.MUL, self.y) if self.needs_input_grad[0] else None), (g.alu(Op.MUL, self.x) if self.needs_input_grad[1] else None)

class Maximum(Function):
  def forward(self, x, y): self.x, self.y = x, y; self.ret = x.alu(Op.MAX, y); return self.ret
  def backward(self, g):
    # derivatives.yaml: x gets where(x == y, g / 2, g).masked_fill_(x < y, 0), y the same with x > y (a tie halves
    # the gradient; a NaN on either side passes all of it to both)
    zero, tie = g.const_like(0), self.x.alu(Op.CMPEQ, self.y)
    half = tie.alu(Op.WHERE, g.alu(Op.MUL, g.const_like(0.5)), g)
    return self.x.alu(Op.CMPLT, self.y).alu(Op.WHERE, zero, half), self.y.alu(Op.CMPLT, self.x).alu(Op.WHERE, zero, half)

class Where(Function):
  def forward(self, c, x, y): self.c = c; return c.alu(Op.WHERE, x, y)
  def backward(self, g):
    z = g.const_like(0)
    return None, (self.c.alu(Op.WHERE, g, z) if self.needs_input_grad[1] else None), (self.c.alu(Op.WHERE, z, g) if self.needs_input_grad[2] else None)

# ---- reduce ----
class Sum(Function):
  def forward(self, x, axes): self.shape = x.shape; return x.reduce(Op.SUM, axes)
  def backward(self, g): return g.expand(self.shape)

class Max(Function):
  def forward(self, x, axes): self.x, self.ret = x, x.reduce(Op.RMAX, axes); return self.ret
  def backward(self, g):
    mask = self.x.alu(Op.CMPEQ, self.ret.expand(self.x.shape)).cast(g.dtype)
    count = mask.reduce(Op.SUM, tuple(i for i, (a, b) in enumerate(zip(self.x.shape, self.ret.shape)) if a != b))
    return mask.alu(Op.MUL, g.alu(Op.MUL, count.alu(Op.RECIP)).expand(self.x.shape))

# ---- movement ----
class Reshape(Function):
  def forward(self, x, shape): self.shape = x.shape; return x.reshape(shape)
  def backward(self, g): return g.reshape(self.shape)

class Permute(Function):
  def forward(self, x, order): self.order = order; return x.permute(order)
  def backward(self, g): return g.permute(tuple(sorted(range(len(self.order)), key=lambda i: self.order[i])))

class Expand(Function):
  def forward(self, x, shape): self.shape = x.shape; return x.expand(shape)
  def backward(self, g): return g.reduce(Op.SUM, tuple(i for i, (a, b) in enumerate(zip(self.shape, g.shape)) if a != b))

class Pad(Function):
  def forward(self, x, arg): self.arg = tuple((b, b + s) for (b, _), s in zip(arg, x.shape)); return x.pad(arg)
  def backward(self, g): return g.shrink(self.arg)

class Shrink(Function):
  def forward(self, x, arg): self.arg = tuple((lo, s - hi) for (lo, hi), s in zip(arg, x.shape)); return x.shrink(arg)
  def backward(self, g): return g.pad(self.arg)

class Flip(Function):
  def forward(self, x, axes): self.axes = axes; return x.flip(axes)
  def backward(self, g): return g.flip(self.axes)

class Copy(Function):
  def forward(self, x, device): self.device = x.device; return x.copy_to(device)
  def backward(self, g): return g.copy_to(self.device)

class Contiguous(Function):
  def forward(self, x): return x.contiguous()
  def backward(self, g): return g
