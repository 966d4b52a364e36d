"""The CPU matrix product: recognises a contraction kernel (a sum over one axis of the product of two
loads, each broadcast over the other's axes) and renders a packed, register-blocked GEMM for it.

Operands may have any strides and any float dtype: packing converts them to float32 panels (MR rows
of A, NR columns of B), a 6x32 (AVX-512) or 6x16 (AVX2) micro-kernel accumulates in registers, OpenMP splits the (M, N) tiles
or, for many small products, the batch.
"""
from __future__ import annotations
from dataclasses import dataclass
from ..ops import Op
from ..dtypes import dtypes
from ..schedule import Kernel
from .loops import LoopNest
from .cstyle import STORAGE, load_expr, store_expr


@dataclass
class Gemm:
  M: int; N: int; K: int
  a: int; b: int                 # input indices of A (M x K) and B (K x N)
  sa: tuple; sb: tuple           # (stride m|k, stride k|n) for A: (sam, sak), B: (sbk, sbn)
  oa: int; ob: int; oc: int      # offsets
  scm: int; scn: int             # output strides
  batch: list                    # [(extent, stride a, stride b, stride out)]


def match(k: Kernel, nest: LoopNest) -> Gemm | None:
  red = k.reduce
  if red is None or k.ast is not red or red.arg[0] is not Op.SUM or len(nest.shape) - nest.n_out != 1: return None
  mul = red.srcs[0]
  if mul.kind is not Op.MUL: return None
  ops = []
  for x in mul.srcs:
    if x.kind is Op.CAST and x.srcs[0].dtype.is_float and x.dtype is dtypes.float32: x = x.srcs[0]   # exact
    if x.kind != "load" or not x.dtype.is_float or nest.access[id(x)].mask is not None: return None
    ops.append(x)
  (x, y) = ops
  ax, ay = nest.access[id(x)], nest.access[id(y)]
  n_out = nest.n_out
  xs = [i for i in range(n_out) if ax.strides[i] and not ay.strides[i]]
  ys = [i for i in range(n_out) if ay.strides[i] and not ax.strides[i]]
  m_ax, n_ax = (xs[-1] if xs else None), (ys[-1] if ys else None)
  # a sum of products with neither operand broadcast is a batch of dot products (a norm's weight gradient),
  # not a matrix product: leave it to the reduction kernel, whether or not its operands happen to be loads,
  # so that its summation order never depends on how the scheduler fused the operands
  if m_ax is None and n_ax is None: return None
  batch = [(nest.shape[i], ax.strides[i], ay.strides[i], nest.out.strides[i]) for i in range(n_out) if i not in (m_ax, n_ax)]
  st = lambda acc, i: acc.strides[i] if i is not None else 0
  ext = lambda i: nest.shape[i] if i is not None else 1
  r = n_out
  return Gemm(ext(m_ax), ext(n_ax), nest.shape[r], x.arg[0], y.arg[0], (st(ax, m_ax), ax.strides[r]), (ay.strides[r], st(ay, n_ax)),
              ax.offset, ay.offset, nest.out.offset, st(nest.out, m_ax), st(nest.out, n_ax), batch)


TEMPLATE = r"""
#pragma GCC optimize("fp-contract=fast")   /* the micro-kernel's multiply-adds (the rest of the graph does not contract) */
#define MR 6
#ifdef __AVX512F__
#define VL 16   /* floats per vector register: 6 x 32 tile in 12 zmm accumulators */
#else
#define VL 8    /* AVX2: 6 x 16 tile in 12 ymm accumulators (16 registers in all) */
#endif
#define NR (2*VL)
#define KC 256
#define MC 96
#define NT 256
typedef float vf __attribute__((vector_size(VL*4), aligned(4)));
static inline long mn(long a, long b) { return a < b ? a : b; }

static void pack_a(float* restrict ap, const TA* restrict a, long m0, long mlen, long k0, long kb) {
  for (long ip = 0; ip < mlen; ip += MR)
    for (long k = 0; k < kb; k++)
      for (long i = 0; i < MR; i++)
        ap[ip*kb + k*MR + i] = (ip + i < mlen) ? LOADA(a[(m0+ip+i)*(SAM) + (k0+k)*(SAK)]) : 0.0f;
}
static void pack_b(float* restrict bp, const TB* restrict b, long n0, long nlen, long k0, long kb) {
  for (long k = 0; k < kb; k++)
    for (long j = 0; j < NR; j++)
      bp[k*NR + j] = (j < nlen) ? LOADB(b[(k0+k)*(SBK) + (n0+j)*(SBN)]) : 0.0f;
}
static inline void micro(long kb, const float* restrict ap, const float* restrict bp, float* restrict c, long ldc, long mr, long nr, int first) {
  vf c0[MR], c1[MR];
  for (int i = 0; i < MR; i++) { c0[i] = (vf){0}; c1[i] = (vf){0}; }
  for (long k = 0; k < kb; k++) {
    vf b0 = *(const vf*)(bp + k*NR), b1 = *(const vf*)(bp + k*NR + VL);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) { float av = ap[k*MR + i]; c0[i] += av * b0; c1[i] += av * b1; }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; i++) {
      vf* row = (vf*)(c + i*ldc);
      if (first) { row[0] = c0[i]; row[1] = c1[i]; } else { row[0] += c0[i]; row[1] += c1[i]; }
    }
  } else {
    float t[MR*NR] __attribute__((aligned(64)));
    for (int i = 0; i < MR; i++) { *(vf*)(t + i*NR) = c0[i]; *(vf*)(t + i*NR + VL) = c1[i]; }
    for (long i = 0; i < mr; i++) for (long j = 0; j < nr; j++) c[i*ldc + j] = first ? t[i*NR + j] : c[i*ldc + j] + t[i*NR + j];
  }
}
static void gemm_one(const TA* restrict a, const TB* restrict b, TO* restrict out, int serial) {
  const long M = MM, N = NN, K = KK, npad = (N + NR - 1) / NR * NR;
  const long MB = (M + MC - 1) / MC, NB = (N + NT - 1) / NT;
  float* cf = (float*)aligned_alloc(64, ((M * npad * 4) + 63) / 64 * 64);
  float* bp = (float*)aligned_alloc(64, ((KC * npad * 4) + 63) / 64 * 64);
  for (long k0 = 0; k0 < K; k0 += KC) {
    long kb = mn(KC, K - k0);
#pragma omp parallel if(!serial && PAR)
    {
#pragma omp for schedule(static)
      for (long jp = 0; jp < npad; jp += NR) pack_b(bp + jp*kb, b, jp, mn(NR, N - jp), k0, kb);
      float ap[MC*KC] __attribute__((aligned(64)));
      long cur = -1;
#pragma omp for schedule(static)
      for (long t = 0; t < MB*NB; t++) {
        long mi = t / NB, ni = t % NB, m0 = mi*MC, mlen = mn(MC, M - m0), n0 = ni*NT, nend = mn(N, n0 + NT);
        if (mi != cur) { pack_a(ap, a, m0, mlen, k0, kb); cur = mi; }
        for (long ip = 0; ip < mlen; ip += MR)
          for (long jp = n0; jp < nend; jp += NR)
            micro(kb, ap + ip*kb, bp + jp*kb, cf + (m0+ip)*npad + jp, npad, mn(MR, mlen - ip), mn(NR, N - jp), k0 == 0);
      }
    }
  }
  if (K == 0) for (long i = 0; i < M*npad; i++) cf[i] = 0.0f;
#pragma omp parallel for if(!serial && PAR)
  for (long m = 0; m < M; m++) for (long n = 0; n < N; n++) out[m*(SCM) + n*(SCN)] = STORE(cf[m*npad + n]);
  free(cf); free(bp);
}
"""


def render(name: str, g: Gemm, k: Kernel) -> str:
  ta, tb, to = (k.inputs[g.a].dtype, k.inputs[g.b].dtype, k.output.dtype)
  defs = {"TA": f"const {STORAGE[ta]}", "TB": f"const {STORAGE[tb]}", "TO": STORAGE[to], "MM": g.M, "NN": g.N, "KK": g.K,
          "SAM": g.sa[0], "SAK": g.sa[1], "SBK": g.sb[0], "SBN": g.sb[1], "SCM": g.scm, "SCN": g.scn,
          "PAR": int(g.M * g.N * g.K >= 1 << 17)}
  head = "".join(f"#define {key} {val}\n" for key, val in defs.items())
  head += f"#define LOADA(x) {load_expr(ta, '(x)')}\n#define LOADB(x) {load_expr(tb, '(x)')}\n#define STORE(x) {store_expr(to, '(x)')}\n"
  nb = 1
  for e, *_ in g.batch: nb *= e
  args = [f"{STORAGE[to]}* restrict out"] + [f"const {STORAGE[b.dtype]}* restrict in{i}" for i, b in enumerate(k.inputs)]
  names = [f"b{i}" for i in range(len(g.batch))]
  oa = "+".join([str(g.oa)] + [f"{n}*({e[1]})" for n, e in zip(names, g.batch)])
  ob = "+".join([str(g.ob)] + [f"{n}*({e[2]})" for n, e in zip(names, g.batch)])
  oc = "+".join([str(g.oc)] + [f"{n}*({e[3]})" for n, e in zip(names, g.batch)])
  par_batch = nb >= 4 and g.M * g.N * g.K * nb >= 1 << 17
  loops = "".join(f"for (long {n} = 0; {n} < {e[0]}; {n}++)\n" for n, e in zip(names, g.batch))
  pragma = f"#pragma omp parallel for collapse({len(names)})\n" if par_batch else ""
  body = f"gemm_one(in{g.a} + {oa}, in{g.b} + {ob}, out + {oc}, {int(par_batch)});"
  return head + TEMPLATE + f"void {name}({', '.join(args)}) {{\n{pragma}{loops}{{ {body} }}\n}}\n"
