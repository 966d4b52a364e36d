"""The fused attention kernels (kernels/attention.py) rendered as C for the CPU runtime.

Work is per head and stays in cache: a head's keys are transposed once into a D x S panel, then blocks of BQ
query rows make their scores against the visible keys only (a causal block stops at its last row's key), take
the softmax in place, and multiply by V; nothing T x S reaches memory. The backward recomputes each block's
probabilities from the saved log-sum-exp, and one thread owns a key/value head with all its query heads, so
dK and dV are summed without atomics (in a fixed order: the same result every run). Products run on vectors
of 16 floats along the key axis (scores) or the head dimension (the rest), several rows at a time.
float32 or 16-bit inputs (converted on load); any D (rows padded to whole vectors inside).
"""
from __future__ import annotations
from ..codegen.cstyle import STORAGE, load_expr, store_expr

BQ = 32   # query rows per block: their scores (BQ x S floats) stay in L1/L2

COMMON = r"""
#include <omp.h>
#pragma GCC optimize("fp-contract=fast")   /* the products' multiply-adds */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define LN2 0.6931471805599453f
#define LOG2E 1.4426950408889634f
#define SP ((S + 15) / 16 * 16)   /* keys, and head dimensions (DP), padded to whole vectors */
#define DP ((D + 15) / 16 * 16)
#define RB 4   /* rows a product loop keeps in registers at once */
static inline long mn(long a, long b) { return a < b ? a : b; }
static inline long kv_head(long h) { return h / (H / HKV); }
/* keys row t of a block may see: s < visible(t) (bottom-right aligned causal mask) */
static inline long visible(long t) { return CAUSAL ? mn(S, t + S - T + 1) : S; }
/* out[i][s] = sum_d a[i][d] * bt[d][s] for rows i < rows and s < n (bt: D x SP, rows of a apart by DP) */
static void scores(float* restrict out, const float* restrict a, const float* restrict bt, long rows, long n, float mul) {
  for (long i0 = 0; i0 < rows; i0 += RB) {
    const long ri = mn(RB, rows - i0);
    for (long s = 0; s < n; s += 16) {
      v16 acc[RB];
      for (long r = 0; r < RB; r++) acc[r] = (v16){0};
      for (long d = 0; d < D; d++) {
        const v16 b = *(const v16*)(bt + d * SP + s);
        for (long r = 0; r < RB; r++) acc[r] += a[(i0 + (r < ri ? r : 0)) * DP + d] * b;
      }
      for (long r = 0; r < ri; r++) *(v16*)(out + (i0 + r) * SP + s) = acc[r] * mul;
    }
  }
}
/* out[i][:] (+)= mul * sum_{s < n(i)} p[i][s] * b[s][:] for rows i < rows (out and b: rows of DP floats); n(i) = n[i], or
   all for every row where n is NULL */
static void mix(float* restrict out, const float* restrict p, long ldp, const float* restrict b, long rows, const long* restrict n, long all,
                float mul, int add) {
  for (long i0 = 0; i0 < rows; i0 += RB) {
    const long ri = mn(RB, rows - i0);
    long hi = 0, cnt[RB];
    for (long r = 0; r < RB; r++) { cnt[r] = r >= ri ? 0 : n ? n[i0 + r] : all; hi = cnt[r] > hi ? cnt[r] : hi; }
    for (long d = 0; d < DP; d += 16) {
      v16 acc[RB];
      for (long r = 0; r < RB; r++) acc[r] = (v16){0};
      for (long s = 0; s < hi; s++) {
        const v16 x = *(const v16*)(b + s * DP + d);
        for (long r = 0; r < RB; r++) acc[r] += (s < cnt[r] ? p[(i0 + r) * ldp + s] : 0.0f) * x;
      }
      for (long r = 0; r < ri; r++) {
        v16* o = (v16*)(out + (i0 + r) * DP + d);
        *o = add ? *o + acc[r] * mul : acc[r] * mul;
      }
    }
  }
}
static void load_rows(float* restrict dst, const TIN* restrict src, long rows) {   /* rows of D -> rows of DP, zero past D */
  for (long r = 0; r < rows; r++) for (long d = 0; d < DP; d++) dst[r * DP + d] = d < D ? LOAD(src[r * D + d]) : 0.0f;
}
static void transpose(float* restrict dst, const TIN* restrict src) {   /* src S x D -> dst D x SP, zero columns past S */
  for (long d = 0; d < D; d++) for (long s = 0; s < SP; s++) dst[d * SP + s] = s < S ? LOAD(src[s * D + d]) : 0.0f;
}
"""

FORWARD = r"""
void NAME(TIN* restrict o, float* restrict lse, const TIN* restrict q, const TIN* restrict k, const TIN* restrict v) {
#pragma omp parallel
  {
    float* kt = (float*)aligned_alloc(64, D * SP * 4);
    float* vv = (float*)aligned_alloc(64, S * DP * 4);
    float* qb = (float*)aligned_alloc(64, BQ * DP * 4);
    float* sc = (float*)aligned_alloc(64, BQ * SP * 4);
    float* ob = (float*)aligned_alloc(64, BQ * DP * 4);
    long n[BQ];
#pragma omp for schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
      const long b = bh / H, kv = b * HKV + kv_head(bh % H);
      transpose(kt, k + kv * S * D);
      load_rows(vv, v + kv * S * D, S);
      for (long t0 = 0; t0 < T; t0 += BQ) {
        const long rows = mn(BQ, T - t0), last = visible(t0 + rows - 1);
        load_rows(qb, q + (bh * T + t0) * D, rows);
        if (last > 0) scores(sc, qb, kt, rows, last, SCALE * LOG2E);
        for (long i = 0; i < rows; i++) {   /* softmax of row i over its visible keys, in place */
          float* x = sc + i * SP;
          const long m = n[i] = visible(t0 + i) > 0 ? visible(t0 + i) : 0;
          float mx = -INFINITY, sum = 0.0f;
          for (long s = 0; s < m; s++) mx = x[s] > mx ? x[s] : mx;
          for (long s = 0; s < m; s++) { x[s] = k_exp2(x[s] - mx); sum += x[s]; }
          const float inv = m ? 1.0f / sum : 0.0f;
          for (long s = 0; s < m; s++) x[s] *= inv;
          lse[bh * T + t0 + i] = m ? (mx + k_log2(sum)) * LN2 : INFINITY;
        }
        mix(ob, sc, SP, vv, rows, n, 0, 1.0f, 0);
        for (long i = 0; i < rows; i++) for (long d = 0; d < D; d++) o[(bh * T + t0 + i) * D + d] = STORE(ob[i * DP + d]);
      }
    }
    free(kt); free(vv); free(qb); free(sc); free(ob);
  }
}
"""

BACKWARD = r"""
void NAME(float* restrict dq, TIN* restrict dk, TIN* restrict dv, const TIN* restrict q, const TIN* restrict k, const TIN* restrict v,
          const TIN* restrict dout, const float* restrict lse, const float* restrict delta) {
#pragma omp parallel
  {
    float* kt = (float*)aligned_alloc(64, D * SP * 4);
    float* vt = (float*)aligned_alloc(64, D * SP * 4);
    float* kk = (float*)aligned_alloc(64, S * DP * 4);
    float* qb = (float*)aligned_alloc(64, BQ * DP * 4);
    float* gb = (float*)aligned_alloc(64, BQ * DP * 4);
    float* qd = (float*)aligned_alloc(64, BQ * DP * 4);
    float* p = (float*)aligned_alloc(64, BQ * SP * 4);
    float* ds = (float*)aligned_alloc(64, BQ * SP * 4);
    float* pt = (float*)aligned_alloc(64, SP * BQ * 4);
    float* dst = (float*)aligned_alloc(64, SP * BQ * 4);
    float* acck = (float*)aligned_alloc(64, S * DP * 4);
    float* accv = (float*)aligned_alloc(64, S * DP * 4);
    long n[BQ];
#pragma omp for schedule(static)
    for (long bk = 0; bk < B * HKV; bk++) {
      const long b = bk / HKV, hk = bk % HKV;
      transpose(kt, k + bk * S * D); transpose(vt, v + bk * S * D); load_rows(kk, k + bk * S * D, S);
      for (long i = 0; i < S * DP; i++) { acck[i] = 0.0f; accv[i] = 0.0f; }
      for (long h = hk * (H / HKV); h < (hk + 1) * (H / HKV); h++) {
        const long bh = b * H + h;
        for (long t0 = 0; t0 < T; t0 += BQ) {
          const long rows = mn(BQ, T - t0), last = visible(t0 + rows - 1);
          if (last <= 0) { for (long i = 0; i < rows * D; i++) dq[(bh * T + t0) * D + i] = 0.0f; continue; }
          load_rows(qb, q + (bh * T + t0) * D, rows); load_rows(gb, dout + (bh * T + t0) * D, rows);
          scores(p, qb, kt, rows, last, SCALE * LOG2E);
          scores(ds, gb, vt, rows, last, 1.0f);
          for (long i = 0; i < rows; i++) {   /* P from the log-sum-exp, dS = P (dP - delta), both transposed too */
            const long m = n[i] = visible(t0 + i) > 0 ? visible(t0 + i) : 0;
            const float l2 = lse[bh * T + t0 + i] * LOG2E, dl = delta[bh * T + t0 + i];
            for (long s = 0; s < last; s++) {
              const float pv = s < m ? k_exp2(p[i * SP + s] - l2) : 0.0f, dv_ = pv * (ds[i * SP + s] - dl);
              p[i * SP + s] = pv; ds[i * SP + s] = dv_; pt[s * BQ + i] = pv; dst[s * BQ + i] = dv_;
            }
          }
          mix(qd, ds, SP, kk, rows, n, 0, SCALE, 0);
          for (long i = 0; i < rows; i++) for (long d = 0; d < D; d++) dq[(bh * T + t0 + i) * D + d] = qd[i * DP + d];
          mix(acck, dst, BQ, qb, last, 0, rows, SCALE, 1);
          mix(accv, pt, BQ, gb, last, 0, rows, 1.0f, 1);
        }
      }
      for (long s = 0; s < S; s++) for (long d = 0; d < D; d++) {
        dk[(bk * S + s) * D + d] = STORE(acck[s * DP + d]); dv[(bk * S + s) * D + d] = STORE(accv[s * DP + d]);
      }
    }
    free(kt); free(vt); free(kk); free(qb); free(gb); free(qd); free(p); free(ds); free(pt); free(dst); free(acck); free(accv);
  }
}
"""

DELTA = r"""
void NAME(float* restrict delta, const TIN* restrict dout, const TIN* restrict o) {
#pragma omp parallel for schedule(static)
  for (long r = 0; r < B * H * T; r++) {
    float acc = 0.0f;
#pragma omp simd reduction(+:acc)
    for (long d = 0; d < D; d++) acc += LOAD(dout[r * D + d]) * LOAD(o[r * D + d]);
    delta[r] = acc;
  }
}
"""



def _source(kern, body: str, fname: str) -> str:
  from ..codegen.cpu import HEADER
  defs = {"B": kern.b, "H": kern.h, "HKV": kern.hkv, "T": kern.t, "S": kern.s, "D": kern.d, "CAUSAL": int(kern.causal),
          "SCALE": f"{kern.scale!r}f", "BQ": BQ, "TIN": STORAGE[kern.dtype]}
  head = "".join(f"#define {k} {v}\n" for k, v in defs.items())
  head += f"#define LOAD(x) {load_expr(kern.dtype, '(x)')}\n#define STORE(x) {store_expr(kern.dtype, '(x)')}\n"
  return HEADER + head + COMMON + body.replace("NAME", fname)


def render_forward(kern, fname: str) -> str: return _source(kern, FORWARD, fname)
def render_backward(kern, fname: str) -> str: return _source(kern, BACKWARD, fname)
def render_delta(kern, fname: str) -> str: return _source(kern, DELTA, fname)
