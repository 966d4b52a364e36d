"""The contraction pattern every backend's matrix product reads, and the CPU's matrix product.

`match` recognises a contraction kernel: a sum over the product of two loads, each broadcast over the
other's output axes. Its loop axes are of four kinds: M (only A varies), N (only B varies), K (summed)
and batch (both vary). M, N and K may each be several loop axes that no merge joins: a convolution read
through its windows (K = channel x kernel row x kernel column, N = image x output row x output column)
is a matrix product over its input where it lies (an implicit GEMM), with no window matrix in memory.
The GPU renderers read the `batched()` form where there is one (one M and one N axis, the others joining the batch,
one K axis); otherwise they address each operand through `offset`.

The CPU rendering: a packed, register-blocked GEMM. Packing converts A to float32 panels of MR rows and
B to panels of NR columns, reading any strides; a multi-axis M, N or K is addressed through a table of
offsets built at each call. A 6x32 (AVX-512) or 6x16 (AVX2) micro-kernel accumulates in registers and
writes its tile straight into a float32 output (adding on later K blocks); other outputs go through a
small tile. OpenMP threads split M or N (whichever has more panels), or run many small products of a
batch whole.
"""
from __future__ import annotations
import math
from dataclasses import dataclass, replace
from ..ops import Op
from ..dtypes import dtypes
from ..schedule import Kernel
from .loops import LoopNest
from .cstyle import STORAGE, load_expr, store_expr


@dataclass(frozen=True)
class Gemm:
  a: int; b: int                 # input indices of A (M x K) and B (K x N)
  oa: int; ob: int; oc: int      # offsets into A, B and the output
  m: tuple                       # ((extent, stride in A, stride in the output), ...), outermost first
  n: tuple                       # ((extent, stride in B, stride in the output), ...)
  k: tuple                       # ((extent, stride in A, stride in B), ...)
  batch: tuple                   # ((extent, stride in A, stride in B, stride in the output), ...)

  @property
  def M(self): return math.prod(e for e, *_ in self.m)
  @property
  def N(self): return math.prod(e for e, *_ in self.n)
  @property
  def K(self): return math.prod(e for e, *_ in self.k)
  # the single-axis strides (the batched() form): (stride m, stride k) of A, (stride k, stride n) of B, output's m and n
  @property
  def sa(self): return (self.m[0][1] if self.m else 0, self.k[0][1])
  @property
  def sb(self): return (self.k[0][2], self.n[0][1] if self.n else 0)
  @property
  def scm(self): return self.m[0][2] if self.m else 0
  @property
  def scn(self): return self.n[0][2] if self.n else 0

  def batched(self) -> Gemm | None:
    """The product with at most one M and one N axis, the innermost (the outer ones join the batch), and one
    K axis: the form the GPU renderers read. None where K is several axes."""
    if len(self.k) != 1: return None
    extra = [(e, sa, 0, sc) for e, sa, sc in self.m[:-1]] + [(e, 0, sb, sc) for e, sb, sc in self.n[:-1]]
    return replace(self, m=self.m[-1:], n=self.n[-1:], batch=tuple(self.batch) + tuple(extra))

  def transposed(self) -> Gemm:
    """The same product as out^T = B^T A^T: A and B (and M and N) swap roles."""
    return Gemm(self.b, self.a, self.ob, self.oa, self.oc, self.n, self.m, tuple((e, sb, sa) for e, sa, sb in self.k),
                tuple((e, sb, sa, sc) for e, sa, sb, sc in self.batch))


def offset(axes, j: int, x: str) -> str:
  """A C expression (long long) for the offset of flat index x over `axes` ((extent, strides...), outermost first),
  their strides at position j: each axis's index is x divided by the extents inside it, modulo its own."""
  terms, inner = [], 1
  for n, axis in enumerate(reversed(axes)):
    e, st = axis[0], axis[j]
    idx = f"(long long)({x})" if inner == 1 else f"((long long)({x}) / {inner})"
    if n < len(axes) - 1: idx = f"({idx} % {e})"
    if st: terms.append(f"{idx} * ({st})")
    inner *= e
  return "(" + " + ".join(terms) + ")" if terms else "0LL"


def match(k: Kernel, nest: LoopNest) -> Gemm | None:
  red = k.reduce
  if red is None or k.ast is not red or red.arg[0] is not Op.SUM or len(nest.shape) == nest.n_out: return None
  mul = red.srcs[0]
  if mul.kind is not Op.MUL: return None
  ops = []
  for x in mul.srcs:
    if x.kind is Op.CAST and x.srcs[0].dtype.is_float and x.dtype is dtypes.float32: x = x.srcs[0]   # exact
    if x.kind != "load" or not x.dtype.is_float or nest.access[id(x)].mask is not None: return None
    ops.append(x)
  (x, y) = ops
  ax, ay, ao = nest.access[id(x)], nest.access[id(y)], nest.out
  n_out = nest.n_out
  m = tuple((nest.shape[i], ax.strides[i], ao.strides[i]) for i in range(n_out) if ax.strides[i] and not ay.strides[i])
  n = tuple((nest.shape[i], ay.strides[i], ao.strides[i]) for i in range(n_out) if ay.strides[i] and not ax.strides[i])
  # a sum of products with neither operand broadcast is a batch of dot products (a norm's weight gradient),
  # not a matrix product: leave it to the reduction kernel, whether or not its operands happen to be loads,
  # so that its summation order never depends on how the scheduler fused the operands
  if not m and not n: return None
  batch = tuple((nest.shape[i], ax.strides[i], ay.strides[i], ao.strides[i]) for i in range(n_out)
                if bool(ax.strides[i]) == bool(ay.strides[i]))
  kk = tuple((nest.shape[i], ax.strides[i], ay.strides[i]) for i in range(n_out, len(nest.shape)))
  return Gemm(x.arg[0], y.arg[0], ax.offset, ay.offset, ao.offset, m, n, kk, batch)


# ---- the CPU rendering ----

TEMPLATE = r"""
#include <omp.h>
#pragma GCC optimize("fp-contract=fast")   /* the micro-kernel's multiply-adds (the rest of the graph does not contract) */
#define MR 6
#ifdef __AVX512F__
#define VL 16   /* floats per vector register: 6 x 32 tile in 12 zmm accumulators */
#else
#define VL 8    /* AVX2: 6 x 16 tile in 12 ymm accumulators (16 registers in all) */
#endif
#define NR (2*VL)
typedef float vf __attribute__((vector_size(VL*4), aligned(4)));
static inline long mn(long a, long b) { return a < b ? a : b; }

/* Operands are read in runs along the innermost loop axis of M, N or K (a constant stride inside a run, xS_IN,
   every xEXT_IN indices). A run's start comes from the dimension's table (or stride), looked up once per panel
   or K block, not per element. */
typedef struct { long off, pos, len; } run_t;
static long runs(run_t* restrict out, const long* restrict T, long x0, long len, long ext, int dim) {
  long n = 0;
  for (long j = 0; j < len; n++) {
    const long x = x0 + j, r = mn(ext - x % ext, len - j);
    out[n].off = dim == 0 ? AK(x) : dim == 1 ? BK(x) : BN(x); out[n].pos = j; out[n].len = r;
    j += r;
  }
  return n;
}
static void pack_a(float* restrict ap, const TA* restrict a, const long* restrict T, long m0, long mlen, long k0, long kb) {
#if !A_ALONG_M
  run_t kr[KC];
  const long nk = runs(kr, T, k0, kb, KEXT_IN, 0);
#endif
  for (long ip = 0; ip < mlen; ip += MR) {
    float* restrict dst = ap + ip*kb;
    const long rows = mn(MR, mlen - ip);
#if A_ALONG_M   /* A's rows closer than its columns: copy along M */
    long ro[MR];
    for (long i = 0; i < MR; i++) ro[i] = AM(m0 + ip + mn(i, rows - 1));
    for (long k = 0; k < kb; k++) {
      const TA* restrict src = a + AK(k0 + k);
      for (long i = 0; i < MR; i++) dst[k*MR + i] = i < rows ? LOADA(src[ro[i]]) : 0.0f;
    }
#else
    for (long i = 0; i < MR; i++) {
      if (i >= rows) { for (long k = 0; k < kb; k++) dst[k*MR + i] = 0.0f; continue; }
      const TA* restrict row = a + AM(m0 + ip + i);
      for (long q = 0; q < nk; q++) {
        const TA* restrict src = row + kr[q].off;
        float* restrict d = dst + kr[q].pos*MR + i;
        for (long r = 0; r < kr[q].len; r++) d[r*MR] = LOADA(src[r * AKS_IN]);
      }
    }
#endif
  }
}
static void pack_b(float* restrict bp, const TB* restrict b, const long* restrict T, long n0, long nlen, long k0, long kb) {
#if !B_ALONG_N
  run_t kr[KC];
  const long nk = runs(kr, T, k0, kb, KEXT_IN, 1);
#endif
  for (long jp = 0; jp < nlen; jp += NR) {
    float* restrict dst = bp + jp*kb;
    const long cols = mn(NR, nlen - jp);
#if B_ALONG_N   /* B's columns closer than its rows: copy rows of the panel */
    run_t nr[NR];
    const long nn = runs(nr, T, n0 + jp, cols, NEXT_IN, 2);
    for (long k = 0; k < kb; k++) {
      const TB* restrict row = b + BK(k0 + k);
      float* restrict d = dst + k*NR;
      if (nn == 1 && cols == NR) { const TB* restrict src = row + nr[0].off; for (long j = 0; j < NR; j++) d[j] = LOADB(src[j * BNS_IN]); continue; }
      for (long q = 0; q < nn; q++) {
        const TB* restrict src = row + nr[q].off;
        for (long r = 0; r < nr[q].len; r++) d[nr[q].pos + r] = LOADB(src[r * BNS_IN]);
      }
      for (long j = cols; j < NR; j++) d[j] = 0.0f;
    }
#else
    for (long j = 0; j < NR; j++) {
      if (j >= cols) { for (long k = 0; k < kb; k++) dst[k*NR + j] = 0.0f; continue; }
      const TB* restrict col = b + BN(n0 + jp + j);
      for (long q = 0; q < nk; q++) {
        const TB* restrict src = col + kr[q].off;
        float* restrict d = dst + kr[q].pos*NR + j;
        for (long r = 0; r < kr[q].len; r++) d[r*NR] = LOADB(src[r * BKS_IN]);
      }
    }
#endif
  }
}
/* the mr x nr tile of the output at (m, n) from packed panels; first: the first K block (store, else add) */
static inline void micro(long kb, const float* restrict ap, const float* restrict bp, TO* restrict out, const long* restrict T,
                         long m, long n, long mr, long nr, int first) {
  vf c0[MR], c1[MR];
  for (int i = 0; i < MR; i++) { c0[i] = (vf){0}; c1[i] = (vf){0}; }
  for (long k = 0; k < kb; k++) {
    vf b0 = *(const vf*)(bp + k*NR), b1 = *(const vf*)(bp + k*NR + VL);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) { float av = ap[k*MR + i]; c0[i] += av * b0; c1[i] += av * b1; }
  }
#if OUT_F32
  if (mr == MR && nr == NR && N_RUN(n)) {
    for (int i = 0; i < MR; i++) {
      vf* row = (vf*)(out + CM(m + i) + CN(n));
      if (first) { row[0] = c0[i]; row[1] = c1[i]; } else { row[0] += c0[i]; row[1] += c1[i]; }
    }
    return;
  }
#endif
  float t[MR*NR] __attribute__((aligned(64)));
  for (int i = 0; i < MR; i++) { *(vf*)(t + i*NR) = c0[i]; *(vf*)(t + i*NR + VL) = c1[i]; }
  for (long i = 0; i < mr; i++) {
    TO* restrict row = out + CM(m + i);
    for (long j = 0; j < nr; j++) { TO* o = row + CN(n + j); *o = first ? STORE(t[i*NR + j]) : STORE(LOADC(*o) + t[i*NR + j]); }
  }
}
/* rows [m_lo, m_hi) x columns [n_lo, n_hi) of one product, on this thread, with its packing buffers */
static void gemm_part(const TA* restrict a, const TB* restrict b, TO* restrict out, const long* restrict T, float* restrict ap, float* restrict bp,
                      long m_lo, long m_hi, long n_lo, long n_hi, long k_lo, long k_hi) {
  if (k_lo >= k_hi) {
    for (long i = m_lo; i < m_hi; i++) for (long j = n_lo; j < n_hi; j++) out[CM(i) + CN(j)] = STORE(0.0f);
    return;
  }
  for (long n0 = n_lo; n0 < n_hi; n0 += NC) {
    const long nlen = mn(NC, n_hi - n0);
    for (long k0 = k_lo; k0 < k_hi; k0 += KC) {
      const long kb = mn(KC, k_hi - k0);
      pack_b(bp, b, T, n0, nlen, k0, kb);
      for (long m0 = m_lo; m0 < m_hi; m0 += MC) {
        const long mlen = mn(MC, m_hi - m0);
        pack_a(ap, a, T, m0, mlen, k0, kb);
        for (long jp = 0; jp < nlen; jp += NR)
          for (long ip = 0; ip < mlen; ip += MR)
            micro(kb, ap + ip*kb, bp + jp*kb, out, T, m0 + ip, n0 + jp, mn(MR, mlen - ip), mn(NR, nlen - jp), k0 == k_lo);
      }
    }
  }
}
"""

MR, NR = 6, 32        # the micro-kernel's tile (NR: AVX-512's; AVX2 runs 16 columns)
MC, NC = 96, 512      # rows of A and columns of B packed at a time (a thread's A block in L2, its B block in L2/L3)
KC = 256              # depth of a packed block: an NR-column panel of B, KC deep, stays in L1 (32 KiB) while A streams
PARALLEL_MACS = 1 << 17   # multiply-adds below which a product runs on one thread (an OpenMP fork costs a few microseconds)
BATCH_SPLIT = 4       # products in a batch from which threads take whole products instead of splitting each
KSPLIT_TILES = 16     # output tiles (MR x NR) below which threads split K instead (a weight gradient: long K, small M x N)


def _tables(g: Gemm) -> tuple[dict, list]:
  """Offset macros (AM AK BK BN CM CN and N_RUN) and the C lines that fill the index tables of multi-axis
  dimensions: T[...] holds, for each flat index, its offset in the operand (one table per operand and dimension)."""
  macros, fill, size = {}, [], 0
  for dim, names, axes in (("m", ("AM", "CM"), g.m), ("k", ("AK", "BK"), g.k), ("n", ("BN", "CN"), g.n)):
    if len(axes) <= 1:
      for j, name in enumerate(names): macros[name] = f"((long)(x)*({axes[0][j + 1] if axes else 0}))"
      continue
    ext = math.prod(e for e, *_ in axes)
    idx = [f"i{dim}{q}" for q in range(len(axes))]
    loops = "".join(f"for (long {v} = 0; {v} < {e}; {v}++) " for v, (e, *_) in zip(idx, axes))
    body = []
    for j, name in enumerate(names):
      macros[name] = f"T[{size + j * ext} + (x)]"
      body.append(f"T[{size + j * ext} + p] = " + "+".join(f"{v}*({s[j]})" for v, (_, *s) in zip(idx, axes)) + ";")
    fill.append(f"{{ long p = 0; {loops}{{ {' '.join(body)} p++; }} }}")
    size += 2 * ext
  if len(g.n) > 1:   # which NR-column panels of the output are contiguous (written with vector stores): a byte each
    macros["N_RUN"] = f"((const char*)(T + {size}))[(x) / NR]"
    fill.append(f"for (long q = 0; q < ({g.N} + NR - 1) / NR; q++) {{ long ok = 1, j0 = q * NR; for (long j = 1; j < NR && j0 + j < {g.N}; j++) "
                f"ok &= T[{size - g.N} + j0 + j] == T[{size - g.N} + j0] + j; ((char*)(T + {size}))[q] = (char)ok; }}")
    size += -(-g.N // 8)
  else: macros["N_RUN"] = "1" if g.scn == 1 else "0"
  return macros, fill, size


def _along(mn_axes, k_axes, j, jk, width) -> bool:
  """Whether an operand is packed along its M (or N) axes rather than along K: the way with unit-stride runs, and
  of those the longer run (a panel is `width` wide, a K block KC deep); else the smaller stride."""
  (e1, s1), (e2, s2) = ((mn_axes[-1][0], abs(mn_axes[-1][j])) if mn_axes else (1, 1 << 62)), (k_axes[-1][0], abs(k_axes[-1][jk]))
  if (s1 == 1) != (s2 == 1): return s1 == 1
  return min(e1, width) >= min(e2, KC) if s1 == 1 else s1 <= s2


def render(name: str, g: Gemm, k: Kernel) -> str:
  # the micro-kernel writes vectors along N: put the output's contiguous axis there
  if g.m and g.m[-1][2] == 1 and not (g.n and g.n[-1][2] == 1): g = g.transposed()
  ta, tb, to = (k.inputs[g.a].dtype, k.inputs[g.b].dtype, k.output.dtype)
  macros, fill, tsize = _tables(g)
  nb = math.prod(e for e, *_ in g.batch)
  par = g.M * g.N * g.K * nb >= PARALLEL_MACS
  tiles = -(-g.M // MR) * -(-g.N // NR)
  ksplit = par and nb == 1 and tiles < KSPLIT_TILES and g.K >= 2 * KC
  if ksplit:   # the threads sum parts of K into float32 M x N blocks of their own; the blocks are added into the output after
    macros |= {"OCM": macros["CM"], "OCN": macros["CN"], "CM": "((long)(x)*NN)", "CN": "(x)", "N_RUN": "1"}
  kc = min(KC, g.K) if to is dtypes.float32 or ksplit else max(g.K, 1)   # other outputs cannot accumulate across K blocks: one block
  defs = {"TA": f"const {STORAGE[ta]}", "TB": f"const {STORAGE[tb]}", "TO": "float" if ksplit else STORAGE[to], "MM": g.M, "NN": g.N, "KK": g.K,
          "MC": min(MC, -(-g.M // MR) * MR), "NC": min(NC, -(-g.N // NR) * NR), "KC": max(kc, 1), "OUT_F32": int(to is dtypes.float32 or ksplit),
          "A_ALONG_M": int(_along(g.m, g.k, 1, 1, MR)), "B_ALONG_N": int(_along(g.n, g.k, 1, 2, NR)),
          "KEXT_IN": g.k[-1][0], "AKS_IN": g.k[-1][1], "BKS_IN": g.k[-1][2], "NEXT_IN": g.n[-1][0] if g.n else 1, "BNS_IN": g.n[-1][1] if g.n else 0}
  head = "".join(f"#define {key} {val}\n" for key, val in defs.items())
  head += "".join(f"#define {key}(x) {val}\n" for key, val in macros.items())
  stores = {"STORE": store_expr(to, "(x)"), "LOADC": load_expr(to, "(x)")}
  if ksplit: stores = {"STORE": "(x)", "LOADC": "(x)", "OSTORE": stores["STORE"]}
  head += f"#define LOADA(x) {load_expr(ta, '(x)')}\n#define LOADB(x) {load_expr(tb, '(x)')}\n" + "".join(f"#define {key}(x) {val}\n" for key, val in stores.items())
  args = [f"{STORAGE[to]}* restrict out"] + [f"const {STORAGE[b.dtype]}* restrict in{i}" for i, b in enumerate(k.inputs)]
  names = [f"b{i}" for i in range(len(g.batch))]
  off = lambda base, j: "+".join([str(base)] + [f"{v}*({e[j]})" for v, e in zip(names, g.batch)])
  loops = "".join(f"for (long {v} = 0; {v} < {e[0]}; {v}++)\n" for v, e in zip(names, g.batch))
  operands = lambda dst: f"in{g.a} + {off(g.oa, 1)}, in{g.b} + {off(g.ob, 2)}, {dst}, T, ap, bp"
  thread = "const long nt = omp_get_num_threads(), t = omp_get_thread_num(), mp = (MM + MR - 1) / MR, np = (NN + NR - 1) / NR;\n"
  pre, post = "", ""
  if ksplit:
    pre = "float* parts = (float*)aligned_alloc(64, omp_get_max_threads() * MM * NN * 4 + 64);\n"
    work = (thread + "const long kb = (KK + KC - 1) / KC;\n"
            f"gemm_part({operands('parts + t * MM * NN')}, 0, MM, 0, NN, kb * t / nt * KC, mn(KK, kb * (t + 1) / nt * KC));\n"
            "#pragma omp barrier\n"
            f"for (long i = MM * t / nt; i < MM * (t + 1) / nt; i++) for (long j = 0; j < NN; j++) {{\n"
            "  float s = 0.0f;\n  for (long u = 0; u < nt; u++) s += parts[u * MM * NN + i * NN + j];\n"
            f"  out[{off(g.oc, 3)} + OCM(i) + OCN(j)] = OSTORE(s);\n}}")
    post = "free(parts);\n"
  elif par and nb >= BATCH_SPLIT:   # many products: whole ones per thread
    work = f"#pragma omp for collapse({len(names)}) schedule(static)\n{loops}gemm_part({operands('out + ' + off(g.oc, 3))}, 0, MM, 0, NN, 0, KK);"
  else:   # each product split over the threads by rows (M) or columns (N), whichever has more panels
    split = ("m_lo = mp * t / nt * MR; m_hi = mn(MM, mp * (t + 1) / nt * MR);" if -(-g.M // MR) >= -(-g.N // NR)
             else "n_lo = np * t / nt * NR; n_hi = mn(NN, np * (t + 1) / nt * NR);")
    work = (thread + f"long m_lo = 0, m_hi = MM, n_lo = 0, n_hi = NN;\n{split}\n{loops}gemm_part({operands('out + ' + off(g.oc, 3))}, m_lo, m_hi, n_lo, n_hi, 0, KK);")
  table = [f"long* T = (long*)malloc({max(tsize, 1) * 8});", *fill] if tsize else ["const long* T = 0;"]
  return (head + TEMPLATE + f"void {name}({', '.join(args)}) {{\n" + "\n".join(table) + f"\n{pre}#pragma omp parallel if({int(par)})\n{{\n"
          "float* ap = (float*)aligned_alloc(64, MC * KC * 4);\nfloat* bp = (float*)aligned_alloc(64, KC * NC * 4);\n"
          f"{work}\nfree(ap); free(bp);\n}}\n{post}" + ("free(T);\n" if tsize else "") + "}\n")
