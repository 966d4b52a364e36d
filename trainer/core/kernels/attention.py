"""Fused attention (flash-attention 2 style): softmax(scale * q k^T) v without the T x S scores in memory.

  q (B, H, T, D), k/v (B, Hkv, S, D), H a multiple of Hkv (grouped-query heads share k/v); causal masks
  are aligned to the bottom right: query t sees keys s <= t + S - T (torch's is_causal, and so the composed
  path, aligns them to the top left; `covers` takes causal calls only when T == S, where the two agree).

Kernels (CUDA: bf16 or fp16 q/k/v, D in {64, 128}, any T and S, tensor cores mma.sync m16n8k16 with
fp32 accumulators; the CPU: any float type and D, in C (attention_cpu.py); the numpy references, float64 inside, are
what the numpy interpreter runs):

  AttentionForward(q, k, v) -> the output O (B, H, T, D) in q's dtype and each row's log-sum-exp
      (B, H, T) float32 (natural log, of scale * scores; +inf for a row with no visible key). One block
      of 8 warps per 128 query rows streams 64-key tiles of K and V through shared memory (cp.async, two
      stages) with an online softmax; causal blocks stop at their last visible key.
  AttentionDelta(dO, O) -> delta = rowsum(dO * O) (B, H, T) float32.
  AttentionBackward(q, k, v, dO, lse, delta) -> dQ (B, H, T, D) float32, dK and dV (B, Hkv, S, D) in q's dtype:
      one block of 8 warps per 128 keys of a k/v head loops over the query heads of its group and their query tiles,
      recomputes P from the saved log-sum-exp and accumulates dK and dV in registers (no atomics), stored
      once at the end; dQ is added into its zeroed output with float32 atomics, so its last bits can vary
      from run to run (dK and dV do not).

On sm_90 devices (H100, H200) the forward and the D = 128 backward are the wgmma kernels of attention_sm90
(the same inputs and outputs, built for sm_90a); the mma.sync kernels above serve every other device.

A row with no visible key (causal with T > S) gives a zero output and zero gradients (as the composed
path does for a fully masked row, and torch). Memory beyond the inputs is O(B*H*T*D): the output, log-sum-exp, delta and the gradients.
`flash_attention` is the autograd entry; functional.scaled_dot_product_attention calls it on CUDA and CPU
devices for the cases `covers` accepts and composes primitive ops otherwise.
"""
from __future__ import annotations
import math
import numpy as np
from ..custom import CustomKernel
from ..dtypes import DType, dtypes, f32_to_bf16, bf16_to_f32
from ..function import Function
from ..lazy import LazyBuffer
from . import attention_sm90 as sm90, attention_cpu

LOG2E = 1.4426950408889634


def _scores(q, k, h_of_kv, scale):
  """scale * q k^T for every query head: (B, H, T, S)."""
  return np.einsum("bhtd,bhsd->bhts", q, k[:, h_of_kv]) * scale


def _hopper(arch: str) -> bool:
  """Whether the device takes the wgmma kernels (attention_sm90)."""
  return arch in ("sm_90", "sm_90a")


def _visible(T, S, causal):
  return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T) if causal else np.ones((T, S), bool)


class _Attention(CustomKernel):
  def __init__(self, b: int, h: int, hkv: int, t: int, s: int, d: int, causal: bool, scale: float, dtype: DType):
    self.b, self.h, self.hkv, self.t, self.s, self.d = b, h, hkv, t, s, d
    self.causal, self.scale, self.dtype = bool(causal), float(scale), dtype

  def key(self): return (self.b, self.h, self.hkv, self.t, self.s, self.d, self.causal, self.scale, self.dtype.name)

  def _kv_head(self): return np.arange(self.h) // (self.h // self.hkv)

  def _shaped(self, q, k, v):
    """The inputs as float64 (B, H, T, D) / (B, Hkv, S, D) arrays (a source may arrive in its buffer's shape)."""
    kv = (self.b, self.hkv, self.s, self.d)
    return q.reshape(self.b, self.h, self.t, self.d).astype(np.float64), k.reshape(kv).astype(np.float64), v.reshape(kv).astype(np.float64)

  def _mma_t(self) -> str: return "bf16" if self.dtype is dtypes.bfloat16 else "f16"

  def _defines(self) -> str:
    if self.dtype not in (dtypes.bfloat16, dtypes.float16) or self.d not in (64, 128):
      raise NotImplementedError(f"{self.name}: CUDA kernels take bfloat16/float16 with D 64 or 128, got {self.dtype.name} D={self.d}")
    defs = {"H": self.h, "HKV": self.hkv, "T": self.t, "S": self.s, "D": self.d, "DP": self.d + 8,
            "CAUSAL": int(self.causal), "SCALE": f"{self.scale!r}f", "SCALE_LOG2": f"{self.scale * LOG2E!r}f", "MMA_T": self._mma_t(),
            "IS_BF16": int(self.dtype is dtypes.bfloat16)}
    return "".join(f"#define {k} {v}\n" for k, v in defs.items())


class AttentionForward(_Attention):
  name = "attention_fwd"
  BM, BN = 128, 64

  def reference(self, q, k, v):
    q, k, v = self._shaped(q, k, v)
    s = _scores(q, k, self._kv_head(), self.scale)
    vis = _visible(self.t, self.s, self.causal)
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    seen = np.isfinite(m)
    p = np.exp(s - np.where(seen, m, 0))
    l = p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bhsd->bhtd", p / np.where(seen, l, 1), v[:, self._kv_head()])
    lse = np.where(seen, m + np.log(np.where(seen, l, 1)), np.inf)[..., 0]
    return o, lse

  def render_c(self, fname: str) -> str: return attention_cpu.render_forward(self, fname)

  def render_cuda(self, fname: str, arch: str):
    from ..codegen.cuda import Rendered, HEADER
    grid = (self.b * self.h, (self.t + self.BM - 1) // self.BM, 1)   # every head's longest rows first: no causal tail
    if _hopper(arch): return sm90.render_forward(self, fname, grid, HEADER + self._defines() + COMMON)
    src = HEADER + self._defines() + f"#define BM {self.BM}\n#define BN {self.BN}\n" + COMMON + FORWARD.replace("@NAME@", fname)
    smem = (self.BM + 4 * self.BN) * (self.d + 8) * 2
    return Rendered(src, grid, (256, 1, 1), smem)


class AttentionBackward(_Attention):
  name = "attention_bwd"
  BN = 128

  @property
  def BM(self): return 32 if self.d == 128 else 64

  def reference(self, q, k, v, do, lse, delta):
    hk, rows = self._kv_head(), (self.b, self.h, self.t)
    q, k, v = self._shaped(q, k, v)
    do = do.reshape(rows + (self.d,)).astype(np.float64)
    lse = lse.reshape(rows).astype(np.float64)
    s = _scores(q, k, hk, self.scale)
    p = np.where(_visible(self.t, self.s, self.causal), np.exp(s - lse[..., None]), 0)
    dp = np.einsum("bhtd,bhsd->bhts", do, v[:, hk])
    ds = p * (dp - delta.reshape(rows + (1,)).astype(np.float64))
    dq = np.einsum("bhts,bhsd->bhtd", ds, k[:, hk]) * self.scale
    group = lambda x: x.reshape(self.b, self.hkv, self.h // self.hkv, self.s, self.d).sum(2)
    dk = group(np.einsum("bhts,bhtd->bhsd", ds, q)) * self.scale
    dv = group(np.einsum("bhts,bhtd->bhsd", p, do))
    return dq, dk, dv

  def render_c(self, fname: str) -> str: return attention_cpu.render_backward(self, fname)

  def render_cuda(self, fname: str, arch: str):
    from ..codegen.cuda import Rendered, HEADER
    zero = self.b * self.h * self.t * self.d * 4   # dQ, accumulated atomically
    grid = (self.b * self.hkv, (self.s + self.BN - 1) // self.BN, 1)   # the first keys (most causal rows) of every head first
    if _hopper(arch) and self.d == 128:
      return sm90.render_backward(self, fname, grid, HEADER + self._defines() + COMMON, zero)
    bm, bn, dp = self.BM, self.BN, self.d + 8
    src = HEADER + self._defines() + f"#define BM {bm}\n#define BN {bn}\n" + COMMON + BACKWARD.replace("@NAME@", fname)
    smem = 2 * bn * dp * 2 + 4 * bm * dp * 2 + bn * (bm + 8) * 2 + 4 * bm * 4
    return Rendered(src, grid, (256, 1, 1), smem, zero_output=zero)


class AttentionDelta(_Attention):
  """delta = rowsum(dO * O) (B, H, T) float32 from the output gradient and the output:
  one warp per row."""
  name = "attention_delta"

  def reference(self, do, o):
    rows = (self.b, self.h, self.t)
    o = o.reshape(rows + (self.d,)).astype(np.float64)
    return (do.reshape(rows + (self.d,)).astype(np.float64) * o).sum(-1)

  def render_c(self, fname: str) -> str: return attention_cpu.render_delta(self, fname)

  def render_cuda(self, fname: str, arch: str):
    from ..codegen.cuda import Rendered, HEADER
    n = self.b * self.h * self.t
    src = HEADER + self._defines() + COMMON + DELTA.replace("@NAME@", fname).replace("@ROWS@", str(n))
    return Rendered(src, ((n + 7) // 8, 1, 1), (256, 1, 1))


class FlashAttention(Function):
  def forward(self, q: LazyBuffer, k: LazyBuffer, v: LazyBuffer, causal: bool, scale: float):
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    # the kernels read contiguous heads: made once here and kept for backward (not a second copy there)
    q, k, v = (x if x.view.contiguous else x.contiguous() for x in (q, k, v))
    self.q, self.k, self.v, self.dtype = q, k, v, q.dtype
    self.args = (b, h, hkv, t, s, d, causal, scale, q.dtype)
    self.out, self.lse = LazyBuffer.custom(AttentionForward(*self.args), [q, k, v], [((b, h, t, d), q.dtype), ((b, h, t), dtypes.float32)])
    return self.out

  def backward(self, g: LazyBuffer):
    b, h, hkv, t, s, d = self.args[:6]
    g = g.cast(self.dtype)
    if not g.view.contiguous: g = g.contiguous()   # one copy for both kernels that read it
    [delta] = LazyBuffer.custom(AttentionDelta(*self.args), [g, self.out], [((b, h, t), dtypes.float32)])
    kv = ((b, hkv, s, d), self.dtype)
    dq32, dk, dv = LazyBuffer.custom(AttentionBackward(*self.args), [self.q, self.k, self.v, g, self.lse, delta],
                                     [((b, h, t, d), dtypes.float32), kv, kv])
    return tuple(g if need else None for g, need in zip((dq32.cast(self.dtype), dk, dv), self.needs_input_grad))


def covers(q, k, v, attn_mask=None, scale=None, dropout_p=0.0, is_causal=False) -> bool:
  """Whether the fused kernels handle this scaled_dot_product_attention call: no mask, no dropout, and, when causal,
  T == S (the kernels align a causal mask to the bottom right, torch's function to the top left; they agree when square);
  on CUDA bfloat16/float16 with D 64 or 128, on the CPU any float type."""
  call = (attn_mask is None and dropout_p == 0 and (not is_causal or q.shape[-2] == k.shape[-2]) and q.dtype is k.dtype is v.dtype
          and v.shape[-1] == q.shape[-1] and q.ndim >= 3 and q.shape[:-3] == k.shape[:-3] == v.shape[:-3] and q.shape[-2] > 0 and k.shape[-2] > 0
          and (scale is None or scale > 0))
  device = str(q.device)
  if device.startswith("CUDA"): return call and q.dtype in (dtypes.bfloat16, dtypes.float16) and q.shape[-1] in (64, 128)
  return call and device.startswith("CPU") and q.dtype.is_float


def flash_attention(q, k, v, is_causal=False, scale=None):
  """q (..., H, T, D), k/v (..., Hkv, S, D) -> (..., H, T, D) through the fused kernels (on any device: one
  without a rendering runs their numpy references)."""
  *lead, h, t, d = q.shape
  hkv, s = k.shape[-3], k.shape[-2]
  b = math.prod(lead)
  q4, k4, v4 = q.reshape(b, h, t, d), k.reshape(b, hkv, s, d), v.reshape(b, hkv, s, d)
  out = FlashAttention.apply(q4, k4, v4, causal=is_causal, scale=scale if scale is not None else 1 / math.sqrt(d))
  return out.reshape(*lead, h, t, d)


# ------------------------------------------------------------------------------------------- CUDA C
COMMON = r"""
#define NT 256
#define LN2 0.6931471805599453f
static __device__ __forceinline__ unsigned sm_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
static __device__ __forceinline__ void cp_async16(unsigned s, const void* g, int n) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(s), "l"(g), "r"(n));
}
static __device__ __forceinline__ void cp_async4(unsigned s, const void* g, int n) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(s), "l"(g), "r"(n));
}
static __device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }
static __device__ __forceinline__ void ldsm4(unsigned a, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
static __device__ __forceinline__ void ldsm4t(unsigned a, unsigned (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
#define MMA_STR2(t) "mma.sync.aligned.m16n8k16.row.col.f32." #t "." #t ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#define MMA_STR(t) MMA_STR2(t)
static __device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(MMA_STR(MMA_T) : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// two floats -> one register of two 16-bit values (lo in the low half)
static __device__ __forceinline__ unsigned pack2(float lo, float hi) {
  unsigned r;
#if IS_BF16
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}
static __device__ __forceinline__ float from_word(unsigned short w) {
#if IS_BF16
  return __uint_as_float(((unsigned)w) << 16);
#else
  float f; asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(w)); return f;
#endif
}
// the natural log-sum-exp of a row with sum lt and max mx (log2 units); +inf marks a row with no key
static __device__ __forceinline__ float row_lse(float lt, float mx) { return lt > 0.f ? (mx + __log2f(lt)) * LN2 : INFINITY; }
// the end of a forward kernel for a thread's two rows r and r + 8 (of T, in one head): O = acc / row sum into
// out (rows of D), and the log-sum-exp; acc(j, e): the accumulator of columns 8 j + 2 tq (e even) or + 1 (e odd),
// row r + 8 (e >> 1); l, mx: the thread's partial row sums and the row maxima (log2 units)
template <class Acc> static __device__ __forceinline__ void store_rows(unsigned short* out, float* lse, int r, int tq,
                                                                      const float (&l)[2], const float (&mx)[2], Acc acc) {
  #pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    float lt = l[hh];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    const int row = r + hh * 8;
    if (row >= T) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    #pragma unroll
    for (int j = 0; j < D / 8; j++) *(unsigned*)(out + (long long)row * D + j * 8 + tq * 2) = pack2(acc(j, 2 * hh) * inv, acc(j, 2 * hh + 1) * inv);
    if (tq == 0) lse[row] = row_lse(lt, mx[hh]);
  }
}
// the query tiles of ROWS rows that the backward block of keys [n0, n0 + BN) of k/v head hk visits: `iters` of
// them over the query heads of the group, tile `it` of head head(it) from row row0(it) (a causal block skips
// the tiles that see none of its keys)
template <int ROWS> struct QueryTiles {
  int first, per_head, iters, head_0;
  __device__ QueryTiles(int b, int hk, int n0) {
    first = CAUSAL ? max(0, n0 - (S - T)) / ROWS : 0;
    per_head = max((T + ROWS - 1) / ROWS - first, 0);
    iters = (H / HKV) * per_head;
    head_0 = b * H + hk * (H / HKV);
  }
  __device__ int head(int it) const { return head_0 + it / per_head; }
  __device__ int row0(int it) const { return (first + it % per_head) * ROWS; }
};
// p[0] += x, p[1] += y in device memory (one vector atomic from sm_90 on)
static __device__ __forceinline__ void red_add2(float* p, float x, float y) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" :: "l"(p), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(p, x); atomicAdd(p + 1, y);
#endif
}
static __device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x)); return y; }
// rows [row0, row0 + ROWS) of a (limit, D) array into shared memory rows of DP words; rows past limit read as zero
template <int ROWS> static __device__ __forceinline__ void load_rows(unsigned short* sm, const unsigned short* g, int row0, int limit) {
  #pragma unroll
  for (int c = threadIdx.x; c < ROWS * (D / 8); c += NT) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool ok = row0 + r < limit;
    cp_async16(sm_addr(sm + r * DP + col), ok ? g + (long long)(row0 + r) * D + col : g, ok ? 16 : 0);
  }
}
"""

FORWARD = r"""
extern "C" __global__ void __launch_bounds__(NT) @NAME@(unsigned short* __restrict__ out, float* __restrict__ lse, const unsigned short* __restrict__ q,
                                                        const unsigned short* __restrict__ k, const unsigned short* __restrict__ v) {
  extern __shared__ __align__(16) unsigned short smem[];
  unsigned short* Qs = smem;
  unsigned short* Ks = Qs + BM * DP;
  unsigned short* Vs = Ks + 2 * BN * DP;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / (H / HKV);
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;   // the longest causal rows first, over all heads
  const int r0 = warp * 16;
  const unsigned short* qp = q + (long long)bh * T * D;
  const unsigned short* kp = k + ((long long)b * HKV + hk) * S * D;
  const unsigned short* vp = v + ((long long)b * HKV + hk) * S * D;
  int nblocks = (S + BN - 1) / BN;
  if (CAUSAL) { const int last = m0 + BM - 1 + S - T; nblocks = min(nblocks, last < 0 ? 0 : last / BN + 1); }
  load_rows<BM>(Qs, qp, m0, T);
  if (nblocks > 0) { load_rows<BN>(Ks, kp, 0, S); load_rows<BN>(Vs, vp, 0, S); }
  cp_commit();
  float o[D / 8][4], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  #pragma unroll
  for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  unsigned qf[D / 16][4];
  for (int n = 0; n < nblocks; n++) {
    if (n + 1 < nblocks) {
      const int st = (n + 1) & 1;
      load_rows<BN>(Ks + st * BN * DP, kp, (n + 1) * BN, S);
      load_rows<BN>(Vs + st * BN * DP, vp, (n + 1) * BN, S);
    }
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    if (n == 0) {
      #pragma unroll
      for (int kd = 0; kd < D / 16; kd++) ldsm4(sm_addr(Qs + (r0 + (lane & 15)) * DP + kd * 16 + (lane >> 4) * 8), qf[kd]);
    }
    const unsigned short* Kc = Ks + (n & 1) * BN * DP;
    const unsigned short* Vc = Vs + (n & 1) * BN * DP;
    float s[BN / 8][4];
    #pragma unroll
    for (int j = 0; j < BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    #pragma unroll
    for (int kd = 0; kd < D / 16; kd++)
      #pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        unsigned bf[4];
        ldsm4(sm_addr(Kc + (j * 8 + ((lane >> 4) & 1) * 8 + (lane & 7)) * DP + kd * 16 + ((lane >> 3) & 1) * 8), bf);
        mma(s[j], qf[kd], bf[0], bf[1]);
        mma(s[j + 1], qf[kd], bf[2], bf[3]);
      }
    const int n0 = n * BN;
    if (n0 + BN > S || (CAUSAL && n0 + BN - 1 > m0 + S - T)) {
      #pragma unroll
      for (int j = 0; j < BN / 8; j++)
        #pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = n0 + j * 8 + tq * 2 + (e & 1), row = m0 + r0 + gr + (e >> 1) * 8;
          if (key >= S || (CAUSAL && key > row + S - T)) s[j][e] = -INFINITY;
        }
    }
    #pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      float rm = -INFINITY;
      #pragma unroll
      for (int j = 0; j < BN / 8; j++) rm = fmaxf(rm, fmaxf(s[j][2 * hh], s[j][2 * hh + 1]));
      rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 1));
      rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 2));
      const float mnew = fmaxf(mx[hh], rm * SCALE_LOG2);
      const float base = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = ex2(mx[hh] - base);
      mx[hh] = mnew;
      l[hh] *= alpha;
      #pragma unroll
      for (int j = 0; j < D / 8; j++) { o[j][2 * hh] *= alpha; o[j][2 * hh + 1] *= alpha; }
      #pragma unroll
      for (int j = 0; j < BN / 8; j++) {
        s[j][2 * hh] = ex2(fmaf(s[j][2 * hh], SCALE_LOG2, -base));
        s[j][2 * hh + 1] = ex2(fmaf(s[j][2 * hh + 1], SCALE_LOG2, -base));
        l[hh] += s[j][2 * hh] + s[j][2 * hh + 1];
      }
    }
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      const unsigned a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                             pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      #pragma unroll
      for (int jd = 0; jd < D / 8; jd += 2) {
        unsigned bf[4];
        ldsm4t(sm_addr(Vc + (kk * 16 + (lane & 15)) * DP + jd * 8 + (lane >> 4) * 8), bf);
        mma(o[jd], a, bf[0], bf[1]);
        mma(o[jd + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }
  cp_wait<0>();
  store_rows(out + (long long)bh * T * D, lse + (long long)bh * T, m0 + r0 + gr, tq, l, mx, [&](int j, int e) { return o[j][e]; });
}
"""

BACKWARD = r"""
#define SP (BM + 8)
#define QW (BM / 16)          // warps along the query rows of a dQ tile
#define DQW (D * QW / 8)      // dQ columns per warp
extern "C" __global__ void __launch_bounds__(NT, 1) @NAME@(float* __restrict__ dq_all, unsigned short* __restrict__ dk_all,
    unsigned short* __restrict__ dv_all, const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, const unsigned short* __restrict__ dout, const float* __restrict__ lse,
    const float* __restrict__ delta) {
  extern __shared__ __align__(16) unsigned short smem[];
  unsigned short* Ks = smem;
  unsigned short* Vs = Ks + BN * DP;
  unsigned short* Qs = Vs + BN * DP;                 // 2 stages
  unsigned short* dOs = Qs + 2 * BM * DP;            // 2 stages
  unsigned short* dSs = dOs + 2 * BM * DP;           // BN x SP: dS^T of this tile
  float* Ll = (float*)(dSs + BN * SP);               // 2 stages of BM log-sum-exps
  float* Dl = Ll + 2 * BM;                           // 2 stages of BM deltas
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
  const int bhk = blockIdx.x, b = bhk / HKV, hk = bhk % HKV;
  const int n0 = blockIdx.y * BN, kr = warp * 16;
  const long long kvoff = (long long)bhk * S * D;
  unsigned short* dk_out = dk_all + kvoff;
  unsigned short* dv_out = dv_all + kvoff;
  const QueryTiles<BM> tiles(b, hk, n0);
  load_rows<BN>(Ks, k + kvoff, n0, S);
  load_rows<BN>(Vs, v + kvoff, n0, S);
  auto prefetch = [&](int it, int st) {
    const int bh = tiles.head(it), m0 = tiles.row0(it);
    load_rows<BM>(Qs + st * BM * DP, q + (long long)bh * T * D, m0, T);
    load_rows<BM>(dOs + st * BM * DP, dout + (long long)bh * T * D, m0, T);
    for (int r = threadIdx.x; r < BM; r += NT) {
      const bool ok = m0 + r < T;
      cp_async4(sm_addr(Ll + st * BM + r), ok ? lse + (long long)bh * T + m0 + r : lse, ok ? 4 : 0);
      cp_async4(sm_addr(Dl + st * BM + r), ok ? delta + (long long)bh * T + m0 + r : delta, ok ? 4 : 0);
    }
  };
  if (tiles.iters > 0) prefetch(0, 0);
  cp_commit();
  float dk[D / 8][4], dv[D / 8][4];
  #pragma unroll
  for (int j = 0; j < D / 8; j++) { dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.f; dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.f; }
  for (int it = 0; it < tiles.iters; it++) {
    if (it + 1 < tiles.iters) prefetch(it + 1, (it + 1) & 1);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    const int st = it & 1;
    const int bh = tiles.head(it), m0 = tiles.row0(it);
    const unsigned short* Qc = Qs + st * BM * DP;
    const unsigned short* dOc = dOs + st * BM * DP;
    // S^T = K Q^T for this warp's 16 keys
    float s[BM / 8][4], dp[BM / 8][4];
    #pragma unroll
    for (int j = 0; j < BM / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
    #pragma unroll
    for (int kd = 0; kd < D / 16; kd++) {
      unsigned a[4], av[4];
      ldsm4(sm_addr(Ks + (kr + (lane & 15)) * DP + kd * 16 + (lane >> 4) * 8), a);
      ldsm4(sm_addr(Vs + (kr + (lane & 15)) * DP + kd * 16 + (lane >> 4) * 8), av);
      #pragma unroll
      for (int j = 0; j < BM / 8; j += 2) {
        unsigned bq[4], bo[4];
        const int off = (j * 8 + ((lane >> 4) & 1) * 8 + (lane & 7)) * DP + kd * 16 + ((lane >> 3) & 1) * 8;
        ldsm4(sm_addr(Qc + off), bq);
        ldsm4(sm_addr(dOc + off), bo);
        mma(s[j], a, bq[0], bq[1]); mma(s[j + 1], a, bq[2], bq[3]);
        mma(dp[j], av, bo[0], bo[1]); mma(dp[j + 1], av, bo[2], bo[3]);   // dP^T = V dO^T
      }
    }
    // P^T from the saved log-sum-exp, then dS^T = P^T (dP^T - delta)
    const bool need_mask = n0 + BN > S || (CAUSAL && m0 + S - T < n0 + BN - 1);
    #pragma unroll
    for (int j = 0; j < BM / 8; j++)
      #pragma unroll
      for (int c = 0; c < 2; c++) {
        const int qc = j * 8 + tq * 2 + c;
        const float lse2 = Ll[st * BM + qc] * 1.4426950408889634f;
        const float dl = Dl[st * BM + qc];
        #pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          float p = ex2(fmaf(s[j][2 * hh + c], SCALE_LOG2, -lse2));
          if (need_mask) {
            const int key = n0 + kr + gr + hh * 8, qi = m0 + qc;
            if (key >= S || (CAUSAL && key > qi + S - T)) p = 0.f;
          }
          s[j][2 * hh + c] = p;
          dp[j][2 * hh + c] = p * (dp[j][2 * hh + c] - dl);
        }
      }
    // dV += P^T dO, dK += dS^T Q (scaled at the end)
    #pragma unroll
    for (int kk = 0; kk < BM / 16; kk++) {
      const unsigned ap[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                              pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const unsigned as[4] = {pack2(dp[2 * kk][0], dp[2 * kk][1]), pack2(dp[2 * kk][2], dp[2 * kk][3]),
                              pack2(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack2(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
      *(unsigned*)(dSs + (kr + gr) * SP + kk * 16 + tq * 2) = as[0];
      *(unsigned*)(dSs + (kr + gr + 8) * SP + kk * 16 + tq * 2) = as[1];
      *(unsigned*)(dSs + (kr + gr) * SP + kk * 16 + 8 + tq * 2) = as[2];
      *(unsigned*)(dSs + (kr + gr + 8) * SP + kk * 16 + 8 + tq * 2) = as[3];
      #pragma unroll
      for (int jd = 0; jd < D / 8; jd += 2) {
        unsigned bo[4], bq[4];
        const int off = (kk * 16 + (lane & 15)) * DP + jd * 8 + (lane >> 4) * 8;
        ldsm4t(sm_addr(dOc + off), bo);
        ldsm4t(sm_addr(Qc + off), bq);
        mma(dv[jd], ap, bo[0], bo[1]); mma(dv[jd + 1], ap, bo[2], bo[3]);
        mma(dk[jd], as, bq[0], bq[1]); mma(dk[jd + 1], as, bq[2], bq[3]);
      }
    }
    __syncthreads();
    // dQ (BM x D) += dS K: warp (wq, wd) takes 16 query rows and DQW columns, added atomically
    {
      const int wq = warp % QW, wd = warp / QW;
      float dq[DQW / 8][4];
      #pragma unroll
      for (int j = 0; j < DQW / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;
      #pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        unsigned a[4];
        ldsm4t(sm_addr(dSs + (kk * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * SP + wq * 16 + ((lane >> 3) & 1) * 8), a);
        #pragma unroll
        for (int jd = 0; jd < DQW / 8; jd += 2) {
          unsigned bk[4];
          ldsm4t(sm_addr(Ks + (kk * 16 + (lane & 15)) * DP + wd * DQW + jd * 8 + (lane >> 4) * 8), bk);
          mma(dq[jd], a, bk[0], bk[1]); mma(dq[jd + 1], a, bk[2], bk[3]);
        }
      }
      float* dqp = dq_all + (long long)bh * T * D;
      #pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int qi = m0 + wq * 16 + gr + hh * 8;
        if (qi >= T) continue;
        #pragma unroll
        for (int jd = 0; jd < DQW / 8; jd++) red_add2(dqp + (long long)qi * D + wd * DQW + jd * 8 + tq * 2, dq[jd][2 * hh] * SCALE, dq[jd][2 * hh + 1] * SCALE);
      }
    }
  }
  cp_wait<0>();
  #pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int key = n0 + kr + gr + hh * 8;
    if (key >= S) continue;
    #pragma unroll
    for (int jd = 0; jd < D / 8; jd++) {
      *(unsigned*)(dk_out + (long long)key * D + jd * 8 + tq * 2) = pack2(dk[jd][2 * hh] * SCALE, dk[jd][2 * hh + 1] * SCALE);
      *(unsigned*)(dv_out + (long long)key * D + jd * 8 + tq * 2) = pack2(dv[jd][2 * hh], dv[jd][2 * hh + 1]);
    }
  }
}
"""

DELTA = r"""
extern "C" __global__ void __launch_bounds__(NT) @NAME@(float* __restrict__ out, const unsigned short* __restrict__ dout,
                                                        const unsigned short* __restrict__ out_o) {
  const long long row = blockIdx.x * 8LL + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= @ROWS@) return;
  float acc = 0.f;
  #pragma unroll
  for (int c = lane * 2; c < D; c += 64) {
    const unsigned g = *(const unsigned*)(dout + row * D + c), o = *(const unsigned*)(out_o + row * D + c);
    acc += from_word(g & 0xffff) * from_word(o & 0xffff) + from_word(g >> 16) * from_word(o >> 16);
  }
  #pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) out[row] = acc;
}
"""
