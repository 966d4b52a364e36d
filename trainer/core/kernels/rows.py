"""Rows of a table picked by index: the embedding lookup and its gradient.

  take_rows(table (V, D), idx (...)) -> (..., D)     out[n] = table[idx[n]]
  gradient: a (V, D) float32 sum of the output gradient's rows into the rows they came from.

As primitive ops this would be a one-hot matrix product (2 * N * V * D flops: at a vocabulary of 128K
that is a matmul as large as the output layer); as kernels it is a copy. An index outside [0, V) reads
a zero row and its gradient is dropped, on every device. On CUDA the gradient adds rows with float32
atomics, so the order of the additions (and the last bits of a row hit by several tokens) can vary
from run to run; on the CPU (compiled C, or the numpy reference on the interpreter) they add in token order.
"""
from __future__ import annotations
import numpy as np
from ..custom import CustomKernel
from ..dtypes import DType, dtypes
from ..function import Function
from ..lazy import LazyBuffer
from ..codegen.cstyle import STORAGE, load_expr


def _copy_word(row_bytes: int) -> tuple[str, int]:
  """The widest C type that divides a row (rows start 16-byte aligned when their size allows)."""
  for ctyp, size in (("uint4", 16), ("unsigned int", 4), ("unsigned short", 2)):
    if row_bytes % size == 0: return ctyp, size
  return "unsigned char", 1


class _RowsKernel(CustomKernel):
  """n rows of d elements (dtype) moved between a table of v rows and n tokens named by idx (idx_dtype)."""
  def __init__(self, n: int, v: int, d: int, dtype: DType, idx_dtype: DType):
    self.n, self.v, self.d, self.dtype, self.idx_dtype = n, v, d, dtype, idx_dtype

  def key(self): return (self.n, self.v, self.d, self.dtype.name, self.idx_dtype.name)


class GatherRows(_RowsKernel):
  name = "gather_rows"

  def reference(self, table, idx):
    idx, table = idx.reshape(-1).astype(np.int64), table.reshape(self.v, self.d)   # a source may arrive in its buffer's shape
    ok = (idx >= 0) & (idx < self.v)
    return np.where(ok[:, None], table[np.where(ok, idx, 0)], 0).astype(table.dtype)

  def render_c(self, fname: str) -> str:
    from ..codegen.cpu import HEADER
    row = self.d * self.dtype.itemsize
    return HEADER + f"""#include <string.h>
void {fname}(unsigned char* restrict out, const unsigned char* restrict table, const {STORAGE[self.idx_dtype]}* restrict idx) {{
  #pragma omp parallel for
  for (long long n = 0; n < {self.n}; n++) {{
    const long long r = (long long)idx[n];
    if (r >= 0 && r < {self.v}) memcpy(out + n * {row}LL, table + r * {row}LL, {row});
    else memset(out + n * {row}LL, 0, {row});
  }}
}}
"""

  def render_cuda(self, fname: str, arch: str):
    from ..codegen.cuda import Rendered, HEADER
    word, size = _copy_word(self.d * self.dtype.itemsize)
    per_row = self.d * self.dtype.itemsize // size
    src = HEADER + f"""
extern "C" __global__ void __launch_bounds__(256) {fname}({word}* __restrict__ out, const {word}* __restrict__ table, const {STORAGE[self.idx_dtype]}* __restrict__ idx) {{
  const long long n = blockIdx.x * 8LL + threadIdx.y;
  if (n >= {self.n}) return;
  const long long r = (long long)idx[n];
  const bool ok = r >= 0 && r < {self.v};
  for (int c = threadIdx.x; c < {per_row}; c += 32) {{
    {word} w; if (ok) w = table[r * {per_row} + c]; else memset(&w, 0, sizeof(w));
    out[n * {per_row} + c] = w;
  }}
}}
"""
    return Rendered(src, ((self.n + 7) // 8, 1, 1), (32, 8, 1))


class ScatterAddRows(_RowsKernel):
  name = "scatter_add_rows"

  def reference(self, grad, idx):
    idx = idx.reshape(-1).astype(np.int64)
    ok = (idx >= 0) & (idx < self.v)
    out = np.zeros((self.v, self.d), np.float64)
    np.add.at(out, idx[ok], grad.reshape(-1, self.d)[ok].astype(np.float64))
    return out.astype(np.float32)

  def render_c(self, fname: str) -> str:
    """Rows added in token order (deterministic); threads split the feature columns."""
    from ..codegen.cpu import HEADER
    g = load_expr(self.dtype, "grad[n * " + str(self.d) + "LL + c]")
    return HEADER + f"""#include <string.h>
void {fname}(float* restrict out, const {STORAGE[self.dtype]}* restrict grad, const {STORAGE[self.idx_dtype]}* restrict idx) {{
  memset(out, 0, {self.v * self.d * 4}LL);
  #pragma omp parallel
  {{
    #pragma omp for schedule(static)
    for (long long c0 = 0; c0 < {self.d}; c0 += 16) {{
      const long long c1 = c0 + 16 < {self.d} ? c0 + 16 : {self.d};
      for (long long n = 0; n < {self.n}; n++) {{
        const long long r = (long long)idx[n];
        if (r < 0 || r >= {self.v}) continue;
        for (long long c = c0; c < c1; c++) out[r * {self.d}LL + c] += {g};
      }}
    }}
  }}
}}
"""

  def render_cuda(self, fname: str, arch: str):
    from ..codegen.cuda import Rendered, HEADER
    g = load_expr(self.dtype, "grad[n * " + str(self.d) + "LL + c]")
    src = HEADER + f"""
extern "C" __global__ void __launch_bounds__(256) {fname}(float* __restrict__ out, const {STORAGE[self.dtype]}* __restrict__ grad, const {STORAGE[self.idx_dtype]}* __restrict__ idx) {{
  const long long n = blockIdx.x * 8LL + threadIdx.y;
  if (n >= {self.n}) return;
  const long long r = (long long)idx[n];
  if (r < 0 || r >= {self.v}) return;
  for (int c = threadIdx.x; c < {self.d}; c += 32) atomicAdd(&out[r * {self.d}LL + c], {g});
}}
"""
    return Rendered(src, ((self.n + 7) // 8, 1, 1), (32, 8, 1), zero_output=self.v * self.d * 4)


class TakeRows(Function):
  def forward(self, table: LazyBuffer, idx: LazyBuffer):
    v, d = table.shape
    n = idx.size
    self.idx, self.v, self.dtype = idx.reshape((n,)), v, table.dtype
    [out] = LazyBuffer.custom(GatherRows(n, v, d, table.dtype, idx.dtype), [table, self.idx], [((n, d), table.dtype)])
    return out.reshape(idx.shape + (d,))

  def backward(self, g: LazyBuffer):
    d = g.shape[-1]
    n = g.size // d
    kern = ScatterAddRows(n, self.v, d, g.dtype, self.idx.dtype)
    [grad] = LazyBuffer.custom(kern, [g.reshape((n, d)), self.idx], [((self.v, d), dtypes.float32)])
    return grad.cast(self.dtype), None


def take_rows(table, idx):
  """table (V, D)[idx]: the rows named by an integer tensor of any shape -> idx.shape + (D,).
  A table that is not a Tensor (a tensor-parallel Sharded one) does its own lookup."""
  if hasattr(table, "take_rows"): return table.take_rows(idx)
  if table.ndim != 2: raise ValueError(f"take_rows: the table must be 2-d (rows, features), got shape {tuple(table.shape)}")
  if not idx.dtype.is_int: raise TypeError(f"take_rows: indices must be integers, got {idx.dtype.name}")
  if idx.device != table.device: raise ValueError(f"take_rows: table on {table.device}, indices on {idx.device}")
  return TakeRows.apply(table, idx)
