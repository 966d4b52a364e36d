"""Matrix products for the CUDA backend: a contraction kernel (codegen/gemm.match, the same pattern as
the CPU's) rendered as

  * bf16 x bf16 or f16 x f16 on Hopper (sm_90), when the tensor-copy engine can read both operands (each
    contiguous along K or along M/N, 16-byte aligned strides): the wgmma kernel of codegen/cuda_wgmma.py;
  * other bf16 x bf16 or f16 x f16 products (and all of them on other GPUs): a tiled tensor-core kernel,
    mma.sync.m16n8k16 with fp32 accumulators.
    A block computes a BM x BN tile with 8 warps (2 x 4, each 64 x 32); K advances BK at a time through
    two shared-memory stages, fragments read by ldmatrix. An operand contiguous along K with 16-byte aligned rows is copied by
    cp.async (overlapping the next stage's load with this stage's products); one contiguous along M/N
    is read 16 bytes at a time and transposed into shared memory; any other view element by element.
    Edges are bounds-checked (zero fill), so any M, N, K and any strides work.
  * anything else (float32, mixed dtypes): a plain FMA tiled kernel (64 x 64 tiles, 4 x 4 per thread).
Batches (extra output axes of a batched matmul) are grid.z, looping when there are more than 65535. A product of
several K (or M, N) axes that no merge joins, a convolution read through its windows, takes the element-by-element
loaders (mma.sync) or the FMA kernel, each operand addressed by gemm.offset: an implicit GEMM, no window matrix.
"""
from __future__ import annotations
from ..dtypes import dtypes
from ..schedule import Kernel
from .gemm import Gemm, offset
from .cstyle import STORAGE, load_expr, store_expr


def render(name: str, g: Gemm, k: Kernel, arch: str = "sm_90", sms: int = 132):
  from .cuda import Rendered, HEADER
  ta, tb, to = k.inputs[g.a].dtype, k.inputs[g.b].dtype, k.output.dtype
  flat = g.batched()   # one M, N and K axis: what the copy engine and the vector loads read; else offsets by gemm.offset
  g = flat or g
  if flat and ta is tb and ta in (dtypes.bfloat16, dtypes.float16) and arch in ("sm_90", "sm_90a"):
    from . import cuda_wgmma
    r = cuda_wgmma.render(name, g, k, sms)
    if r is not None: return r
  nb = 1
  for e, *_ in g.batch: nb *= e
  args = [f"{STORAGE[to]}* __restrict__ out"] + [f"const {STORAGE[b.dtype]}* __restrict__ in{i}" for i, b in enumerate(k.inputs)]
  bnames = [f"b{i}" for i in range(len(g.batch))]
  split = []
  rem = "bz"
  for n, (e, *_rest) in reversed(list(zip(bnames, g.batch))):
    split.append(f"const long long {n} = {rem}_r % {e}; {rem}_r /= {e};")
  off = lambda base, j: "+".join([f"{base}LL"] + [f"{n}*({e[j]}LL)" for n, e in zip(bnames, g.batch)])
  batch_head = (f"for (long long bz = blockIdx.z; bz < {nb}; bz += gridDim.z) {{\n long long bz_r = bz;\n" + "\n".join(split) +
                f"\nconst long long offa = {off(g.oa, 1)}, offb = {off(g.ob, 2)}, offc = {off(g.oc, 3)};\n")
  defs = {"MM": g.M, "NN": g.N, "KK": g.K, "SBK": f"{g.sb[0]}LL",
          "A_ALONG_K": int(abs(g.k[-1][1]) == 1), "B_ALONG_K": int(abs(g.k[-1][2]) == 1)}
  head = "".join(f"#define {key} {val}\n" for key, val in defs.items())
  head += "".join(f"#define {key}(x) {offset(axes, j, 'x')}\n" for key, axes, j in
                  (("OFFAM", g.m, 1), ("OFFAK", g.k, 1), ("OFFBK", g.k, 2), ("OFFBN", g.n, 1), ("OFFCM", g.m, 2), ("OFFCN", g.n, 2)))
  head += f"#define STORE(x) {store_expr(to, '(x)')}\n"
  A, B = f"in{g.a}", f"in{g.b}"
  if ta is tb and ta in (dtypes.bfloat16, dtypes.float16):
    BM, BN, BK = 128, 128, 32
    mma_t = "bf16" if ta is dtypes.bfloat16 else "f16"
    la = _tile_loader("A", "Ap", "OFFAM", "OFFAK", "MM", BM, BK, g.sa if flat else None, g.oa, [e[1] for e in g.batch], g.M, g.K)
    b_kn = flat and g.sb[1] == 1 and g.N % 8 == 0 and g.sb[0] % 8 == 0 and g.ob % 8 == 0 and all(e[2] % 8 == 0 for e in g.batch)
    if b_kn:   # B contiguous along N: keep it K-major in shared memory, fragments by ldmatrix.trans
      lb = (f"for (int c = threadIdx.x; c < {BN * BK // 8}; c += 256) {{\n"
            f"  const int kk = c / {BN // 8}, rc = (c % {BN // 8}) * 8;\n"
            f"  const bool ok = r0 + rc < NN && k0 + kk < KK;\n"
            f"  const unsigned short* src = ok ? Bp + baseB + (long long)(k0 + kk) * SBK + (r0 + rc) : Bp;\n"
            f"  cp_async16(&Bs[st][kk][rc], src, ok ? 16 : 0);\n}}\n")
      bdecl, bfrag = B_KN_DECL, B_KN_FRAG
    else:
      lb = _tile_loader("B", "Bp", "OFFBN", "OFFBK", "NN", BN, BK, (g.sb[1], g.sb[0]) if flat else None, g.ob, [e[2] for e in g.batch], g.N, g.K)
      bdecl, bfrag = B_NK_DECL, B_NK_FRAG
    body = (MMA_TEMPLATE.replace("@BDECL@", bdecl).replace("@BFRAG@", bfrag).replace("@LOADA@", la).replace("@LOADB@", lb).replace("@MMA_T@", mma_t)
            .replace("@BATCH@", batch_head).replace("@NAME@", name).replace("@ARGS@", ", ".join(args))
            .replace("@A@", A).replace("@B@", B))
    src = HEADER + head + f"#define BM {BM}\n#define BN {BN}\n#define BK {BK}\n" + body
    grid = ((g.N + BN - 1) // BN, (g.M + BM - 1) // BM, min(nb, 65535))
    block = (256, 1, 1)
  else:
    head += f"#define LOADA(x) {load_expr(ta, '(x)')}\n#define LOADB(x) {load_expr(tb, '(x)')}\n"
    body = (FMA_TEMPLATE.replace("@BATCH@", batch_head).replace("@NAME@", name).replace("@ARGS@", ", ".join(args))
            .replace("@A@", A).replace("@B@", B))
    src = HEADER + head + body
    grid = ((g.N + 63) // 64, (g.M + 63) // 64, min(nb, 65535))
    block = (256, 1, 1)
  if grid[1] > 65535: raise NotImplementedError(f"matmul with M={g.M}: more than 65535 row tiles")
  return Rendered(src, grid, block, 0, None)


def _tile_loader(which: str, ptr: str, off_r: str, off_k: str, rows: str, BR: int, BK: int, strides, off: int, bstrides, R: int, K: int) -> str:
  """Code that fills stage `st` of the shared tile {which}s[st][BR][BK+8] (row-major, K contiguous) with
  rows r0.. and k0.. of the operand (element (r, k) at base + off_r(r) + off_k(k)), zero outside. `strides`:
  (stride r, stride k) of a single-axis operand, which 16-byte loads may read; None for several axes."""
  sr, sk = strides or (0, 0)
  aligned = strides is not None and off % 8 == 0 and all(b % 8 == 0 for b in bstrides)
  T = 256
  if sk == 1 and K % 8 == 0 and sr % 8 == 0 and aligned:
    # 16-byte chunks along K, straight into shared memory by cp.async
    n = BR * BK // 8
    return (f"for (int c = threadIdx.x; c < {n}; c += {T}) {{\n"
            f"  const int r = c / {BK // 8}, kc = (c % {BK // 8}) * 8;\n"
            f"  const bool ok = r0 + r < {rows} && k0 + kc < KK;\n"
            f"  const unsigned short* src = ok ? {ptr} + base{which} + {off_r}(r0 + r) + (k0 + kc) : {ptr};\n"
            f"  cp_async16(&{which}s[st][r][kc], src, ok ? 16 : 0);\n}}\n")
  if sr == 1 and R % 8 == 0 and sk % 8 == 0 and aligned:
    # 16-byte chunks along the rows, transposed into shared memory
    n = BR * BK // 8
    return (f"for (int c = threadIdx.x; c < {n}; c += {T}) {{\n"
            f"  const int kk = c / {BR // 8}, rc = (c % {BR // 8}) * 8;\n"
            f"  uint4 v = make_uint4(0, 0, 0, 0);\n"
            f"  if (r0 + rc < {rows} && k0 + kk < KK) v = *(const uint4*)({ptr} + base{which} + {off_k}(k0 + kk) + (r0 + rc));\n"
            f"  const unsigned short* h = (const unsigned short*)&v;\n"
            f"  #pragma unroll\n  for (int j = 0; j < 8; j++) {which}s[st][rc + j][kk] = h[j];\n}}\n")
  # any view: element by element, the operand's contiguous-most axis fastest across threads
  n = BR * BK
  if strides is None or abs(sk) <= abs(sr):
    idx = f"const int r = e / {BK}, kk = e % {BK};"
  else:
    idx = f"const int kk = e / {BR}, r = e % {BR};"
  return (f"for (int e = threadIdx.x; e < {n}; e += {T}) {{\n  {idx}\n"
          f"  unsigned short v = 0;\n"
          f"  if (r0 + r < {rows} && k0 + kk < KK) v = {ptr}[base{which} + {off_r}(r0 + r) + {off_k}(k0 + kk)];\n"
          f"  {which}s[st][r][kk] = v;\n}}\n")


B_NK_DECL = "__shared__ __align__(16) unsigned short Bs[2][BN][SK];"
B_NK_FRAG = r"""
        #pragma unroll
        for (int j = 0; j < NI; j++) {
          const unsigned addr = (unsigned)__cvta_generic_to_shared(&Bs[s][wn * WTN + j * 8 + (lane & 7)][ks + ((lane >> 3) & 1) * 8]);
          asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(b[j][0]), "=r"(b[j][1]) : "r"(addr));
        }"""
B_KN_DECL = "__shared__ __align__(16) unsigned short Bs[2][BK][BN + 8];"
B_KN_FRAG = r"""
        #pragma unroll
        for (int j = 0; j < NI; j++) {
          const unsigned addr = (unsigned)__cvta_generic_to_shared(&Bs[s][ks + (lane & 15)][wn * WTN + j * 8]);
          asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b[j][0]), "=r"(b[j][1]) : "r"(addr));
        }"""

MMA_TEMPLATE = r"""
static __device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(s), "l"(gmem), "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
static __device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
static __device__ __forceinline__ void cp_async_wait0() { asm volatile("cp.async.wait_group 0;\n" ::); }

#define WM 2
#define WN 4
#define WTM (BM / WM)
#define WTN (BN / WN)
#define MI (WTM / 16)
#define NI (WTN / 8)
#define SK (BK + 8)

extern "C" __global__ void __launch_bounds__(256) @NAME@(@ARGS@) {
  __shared__ __align__(16) unsigned short As[2][BM][SK];
  @BDECL@
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp / WN, wn = warp % WN, gr = lane >> 2, tq = lane & 3;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  @BATCH@
  const long long baseA = offa, baseB = offb;
  const unsigned short* Ap = (const unsigned short*)@A@;
  const unsigned short* Bp = (const unsigned short*)@B@;
  float acc[MI][NI][4];
  #pragma unroll
  for (int i = 0; i < MI; i++)
    #pragma unroll
    for (int j = 0; j < NI; j++) { acc[i][j][0] = 0.f; acc[i][j][1] = 0.f; acc[i][j][2] = 0.f; acc[i][j][3] = 0.f; }
  const int KT = (KK + BK - 1) / BK;
  if (KT > 0) {
    { const int st = 0, k0 = 0;
      { const int r0 = m0; @LOADA@ }
      { const int r0 = n0; @LOADB@ }
      cp_async_commit(); }
    for (int kt = 0; kt < KT; kt++) {
      if (kt + 1 < KT) {
        const int st = (kt + 1) & 1, k0 = (kt + 1) * BK;
        { const int r0 = m0; @LOADA@ }
        { const int r0 = n0; @LOADB@ }
      }
      cp_async_commit();
      cp_async_wait1();
      __syncthreads();
      const int s = kt & 1;
      #pragma unroll
      for (int ks = 0; ks < BK; ks += 16) {
        unsigned a[MI][4], b[NI][2];
        #pragma unroll
        for (int i = 0; i < MI; i++) {   // a0..a3: rows 0-7 / 8-15 of k 0-7, then of k 8-15
          const unsigned addr = (unsigned)__cvta_generic_to_shared(&As[s][wm * WTM + i * 16 + (lane & 15)][ks + (lane >> 4) * 8]);
          asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                       : "=r"(a[i][0]), "=r"(a[i][1]), "=r"(a[i][2]), "=r"(a[i][3]) : "r"(addr));
        }
        @BFRAG@
        #pragma unroll
        for (int i = 0; i < MI; i++)
          #pragma unroll
          for (int j = 0; j < NI; j++)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.@MMA_T@.@MMA_T@.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                         : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                         : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
      }
      __syncthreads();
    }
    cp_async_wait0();
  }
  #pragma unroll
  for (int i = 0; i < MI; i++)
    #pragma unroll
    for (int j = 0; j < NI; j++) {
      const int r = m0 + wm * WTM + i * 16 + gr, c = n0 + wn * WTN + j * 8 + tq * 2;
      #pragma unroll
      for (int h = 0; h < 2; h++) {
        const int rr = r + h * 8;
        if (rr < MM) {
          if (c < NN) out[offc + OFFCM(rr) + OFFCN(c)] = STORE(acc[i][j][2 * h]);
          if (c + 1 < NN) out[offc + OFFCM(rr) + OFFCN(c + 1)] = STORE(acc[i][j][2 * h + 1]);
        }
      }
    }
  __syncthreads();
  }
}
"""


FMA_TEMPLATE = r"""
extern "C" __global__ void __launch_bounds__(256) @NAME@(@ARGS@) {
  __shared__ float As[16][64 + 4];
  __shared__ float Bs[16][64 + 4];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  @BATCH@
  float acc[4][4];
  #pragma unroll
  for (int i = 0; i < 4; i++)
    #pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
  for (int k0 = 0; k0 < KK; k0 += 16) {
    for (int e = threadIdx.x; e < 16 * 64; e += 256) {
      int kk, r;
      if (A_ALONG_K) { r = e / 16; kk = e % 16; } else { kk = e / 64; r = e % 64; }
      As[kk][r] = (m0 + r < MM && k0 + kk < KK) ? LOADA(@A@[offa + OFFAM(m0 + r) + OFFAK(k0 + kk)]) : 0.f;
      if (B_ALONG_K) { r = e / 16; kk = e % 16; } else { kk = e / 64; r = e % 64; }
      Bs[kk][r] = (n0 + r < NN && k0 + kk < KK) ? LOADB(@B@[offb + OFFBK(k0 + kk) + OFFBN(n0 + r)]) : 0.f;
    }
    __syncthreads();
    #pragma unroll
    for (int kk = 0; kk < 16; kk++) {
      float a[4], b[4];
      #pragma unroll
      for (int i = 0; i < 4; i++) { a[i] = As[kk][ty + 16 * i]; b[i] = Bs[kk][tx + 16 * i]; }
      #pragma unroll
      for (int i = 0; i < 4; i++)
        #pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  #pragma unroll
  for (int i = 0; i < 4; i++)
    #pragma unroll
    for (int j = 0; j < 4; j++) {
      const int r = m0 + ty + 16 * i, c = n0 + tx + 16 * j;
      if (r < MM && c < NN) out[offc + OFFCM(r) + OFFCN(c)] = STORE(acc[i][j]);
    }
  }
}
"""
