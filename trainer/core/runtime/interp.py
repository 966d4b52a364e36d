"""The numpy interpreter: runs a scheduled Kernel by evaluating its AST with numpy. It is the
reference the compiled backends are tested against, and the fallback where no C compiler exists.
Same semantics as the generated code: floats compute in float32 and round once when stored."""
from __future__ import annotations
import numpy as np
from .host import HostRuntime
from ..dtypes import dtypes, bf16_to_f32, f32_to_bf16
from ..ops import Op
from ..schedule import Kernel


def _compute_np(dt): return np.float32 if dt.is_float else dt.np


def _indices(view, shape):
  """Flat element index and validity of `view` at every point of `shape` (broadcast grids)."""
  idx = np.full((1,) * len(shape), view.offset, dtype=np.int64)
  ok = np.ones((1,) * len(shape), dtype=bool)
  ranges = view.ranges()
  for a, (n, st) in enumerate(zip(shape, view.strides)):
    ar = np.arange(n).reshape([-1 if i == a else 1 for i in range(len(shape))])
    idx = idx + ar * st
    lo, hi = ranges[a]
    if (lo, hi) != (0, view.shape[a]): ok = ok & (ar >= lo) & (ar < hi)
  return np.broadcast_to(idx, shape), np.broadcast_to(ok, shape)


class InterpProgram:
  def __init__(self, k: Kernel): self.k = k
  def bind(self, *handles): return lambda: self(*handles)

  def __call__(self, out, *ins):
    k = self.k
    arrays = [np.frombuffer(h, dtype=b.dtype.np, count=b.size) for h, b in zip(ins, k.inputs)]
    with np.errstate(all="ignore"):
      res = self._eval(k.ast, k.out_shape if k.reduce else k.shape, arrays, {})
      res = np.broadcast_to(res, k.out_shape).reshape(-1)
      o = f32_to_bf16(res) if k.output.dtype is dtypes.bfloat16 else res.astype(k.output.dtype.np)
    out[:o.nbytes] = np.frombuffer(np.ascontiguousarray(o).data, dtype=np.uint8)

  def _eval(self, u, shape, arrays, vals):
    """The value of UOp u at every point of shape (vals: what is computed already, by id)."""
    if id(u) in vals: return vals[id(u)]
    if u.kind == "load":
      idx, ok = _indices(u.arg[1], shape)
      v = arrays[u.arg[0]][np.where(ok, idx, 0)]
      v = bf16_to_f32(v) if u.dtype is dtypes.bfloat16 else v.astype(_compute_np(u.dtype))
      r = np.where(ok, v, np.zeros((), v.dtype))
    elif u.kind == "const":
      _, ok = _indices(u.arg[1], shape)
      r = np.where(ok, np.array(u.arg[0], dtype=_compute_np(u.dtype)), np.zeros((), _compute_np(u.dtype)))
    elif u.kind == "reduce":
      s = self._eval(u.srcs[0], self.k.shape, arrays, vals)
      r = (np.sum if u.arg[0] is Op.SUM else np.max)(s, axis=u.arg[1], keepdims=True).astype(_compute_np(u.dtype))
    else:
      r = _alu(u.kind, u.dtype, [self._eval(s, shape, arrays, vals) for s in u.srcs])
    vals[id(u)] = r
    return r


def _alu(op, dt, a):
  c = _compute_np(dt)
  if op is Op.CAST:
    x = a[0]
    if dt is dtypes.bool: return x != 0
    if dt.is_int and x.dtype.kind == "f": x = np.trunc(np.nan_to_num(x, nan=0, posinf=0, neginf=0))
    if dt is dtypes.bfloat16: return bf16_to_f32(f32_to_bf16(x.astype(np.float32)))   # rounds as a store would
    if dt is dtypes.float16: return x.astype(np.float32).astype(np.float16).astype(np.float32)
    return x.astype(c)
  if op is Op.NEG: return ~a[0] if dt is dtypes.bool else -a[0]
  if op is Op.RECIP: return (np.float32(1) / a[0]).astype(c)
  if op is Op.SQRT: return np.sqrt(a[0]).astype(c)
  if op is Op.EXP2: return np.exp2(a[0]).astype(c)
  if op is Op.LOG2: return np.log2(a[0]).astype(c)
  if op is Op.SIN: return np.sin(a[0]).astype(c)
  if op is Op.WHERE: return np.where(a[0], a[1], a[2]).astype(c)
  if op is Op.MAX: return np.where((a[0] > a[1]) | (a[0] != a[0]), a[0], a[1]).astype(c)   # a NaN wins, as torch.maximum
  if op is Op.CMPLT: return a[0] < a[1]
  if op is Op.CMPEQ: return a[0] == a[1]
  if op is Op.IDIV: return (np.trunc(a[0] / np.where(a[1] == 0, 1, a[1]))).astype(c)
  if op is Op.MOD: return np.fmod(a[0], np.where(a[1] == 0, 1, a[1])).astype(c)
  if dt is dtypes.bool and op in (Op.ADD, Op.MUL): op = Op.OR if op is Op.ADD else Op.AND
  fn = {Op.ADD: np.add, Op.MUL: np.multiply, Op.AND: np.bitwise_and, Op.OR: np.bitwise_or, Op.XOR: np.bitwise_xor,
        Op.SHL: np.left_shift, Op.SHR: np.right_shift}[op]
  return fn(a[0], a[1]).astype(c)


class InterpRuntime(HostRuntime):
  def compile(self, kernel, name): return InterpProgram(kernel)
