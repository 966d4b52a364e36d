"""Hopper (sm_90a) versions of the fused attention forward and backward kernels (kernels/attention.py chooses
them on sm_90 devices): the products run on wgmma, asynchronous warpgroup matrix instructions reading tiles
from shared memory, with fp32 accumulators in registers.

Tiles are stored as the 128-byte swizzle lays them out: D/64 panels of `rows` x 64 elements, each row 128
bytes whose 16-byte chunks are permuted by the row's index mod 8. The copy engine (TMA, tensor maps of
64-column boxes) or cp.async copies place them. The same tile serves as a K-major operand (contracting over
D) and as an MN-major one (contracting over its rows), as wgmma's descriptors can describe both.

  forward: one block per 128 query rows: a producer warpgroup (one thread) copies Q, then K and V tiles of
    128 keys into two stages (mbarriers: full when landed, empty when both consumers are done), and two
    consumer warpgroups of 64 rows each compute S = Q K^T from shared memory, the online softmax in
    registers, and O += P V with P straight from the registers (wgmma's register-A form: the accumulator
    layout of S is the A fragment layout). Each consumer issues S of tile n together with P V of tile n - 1,
    and the two take turns (named barriers), so one's softmax runs while the other's products do.
  backward: one block of two warpgroups per 128 keys (64 each), looping over 64-row query tiles of every head
    of the group (two stages): S^T = K Q^T and dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q with P^T and
    dS^T from registers; dS^T goes to shared memory for dQ = dS K (warpgroup w takes D columns
    [64w, 64w + 64)), added into the output with float32 vector atomics.
Both take and give the same buffers as the mma.sync kernels.
"""
from __future__ import annotations

BN_FWD = 128   # keys per forward tile
STAGES_FWD = 3 # K / V tiles in flight in the forward
BM_BWD = 64    # query rows per backward tile


def _wgmma(name: str, n: int, mma_t: str, a_reg: bool, ta: int, tb: int) -> str:
  """`name(d, a, db, acc)`: wgmma.m64n{n}k16 with fp32 accumulators d[n/2] (+)= A B; A four registers
  (a_reg) or a descriptor, B a descriptor; ta / tb: whether A / B are MN-major; acc 0 overwrites d."""
  regs = ", ".join(f"%{i}" for i in range(n // 2))
  outs = ", ".join(f'"+f"(d[{i}])' for i in range(n // 2))
  k = n // 2
  if a_reg:
    a_arg, a_ops, a_in, trans = "const unsigned (&a)[4]", f"{{%{k}, %{k + 1}, %{k + 2}, %{k + 3}}}", '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3])', f"{tb}"
    b_op, acc_op = f"%{k + 4}", f"%{k + 5}"
  else:
    a_arg, a_ops, a_in, trans = "unsigned long long a", f"%{k}", '"l"(a)', f"{ta}, {tb}"
    b_op, acc_op = f"%{k + 1}", f"%{k + 2}"
  return (f"static __device__ __forceinline__ void {name}(float (&d)[{k}], {a_arg}, unsigned long long b, int acc) {{\n"
          f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, {acc_op}, 0;\\n"\n'
          f'    "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{mma_t}.{mma_t} {{{regs}}}, {a_ops}, {b_op}, p, 1, 1, {trans};\\n}}"\n'
          f'    : {outs}\n    : {a_in}, "l"(b), "r"(acc));\n}}\n')


def helpers(mma_t: str, d: int, bn_fwd: int) -> str:
  """The wgmma forms the two kernels use, for element type `mma_t` ('bf16' / 'f16') and head dim d."""
  return (_wgmma("wg_qk", bn_fwd, mma_t, False, 0, 0) + _wgmma("wg_pv", d, mma_t, True, 0, 1)
          + _wgmma("wg_st", 64, mma_t, False, 0, 0) + _wgmma("wg_acc", d, mma_t, True, 0, 1)
          + _wgmma("wg_dq", 64, mma_t, False, 1, 1))


COMMON90 = r"""
#define WG_FENCE() asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")
#define WG_COMMIT() asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory")
#define WG_WAIT0() asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory")
#define WG_WAIT1() asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory")
#define PROXY_FENCE() asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory")
// byte offset of element (r, c) of a 128-byte-swizzled tile of ROWS rows
#define SWZ(r, c, ROWS) ((((c) >> 6) * (ROWS) + (r)) * 128 + (((((c) >> 3) & 7) ^ ((r) & 7)) << 4) + ((c) & 7) * 2)
// K-major operand: k-step ks (16 elements of D) of the rows starting at row0 of a tile of ROWS rows
#define KDESC(base, ROWS, row0, ks) sdesc((base) + ((ks) >> 2) * (ROWS) * 128 + (row0) * 128 + ((ks) & 3) * 32, 16, 1024)
// MN-major operand: k-step kk (16 rows) of a tile of ROWS rows, starting at D column 64 * panel
#define MDESC(base, ROWS, panel, kk) sdesc((base) + (panel) * (ROWS) * 128 + (kk) * 2048, (ROWS) * 128, 1024)
// rows [row0, row0 + ROWS) of a (limit, D) array into a swizzled tile; rows past limit read as zero
template <int ROWS> static __device__ __forceinline__ void load_tile(unsigned sm, const unsigned short* g, int row0, int limit) {
  #pragma unroll
  for (int c = threadIdx.x; c < ROWS * (D / 8); c += NT) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool ok = row0 + r < limit;
    cp_async16(sm + SWZ(r, col, ROWS), ok ? g + (long long)(row0 + r) * D + col : g, ok ? 16 : 0);
  }
}
"""

FORWARD90 = r"""
// barriers in shared memory: Q landed, K / V of a stage landed, a stage free again (both consumers done with it)
#define FULL_Q (bars)
#define FULL_K(s) (bars + 8 + 8 * (s))
#define FULL_V(s) (bars + 8 + 8 * (ST + (s)))
#define EMPTY(s) (bars + 8 + 8 * (2 * ST + (s)))
// keep values in registers across this point (the compiler must not move their reads or writes past it)
#define KEEP_F(x, n) _Pragma("unroll") for (int i_ = 0; i_ < (n); i_++) asm volatile("" : "+f"((x)[i_]) :: "memory")
#define KEEP_R(x, n) _Pragma("unroll") for (int i_ = 0; i_ < (n); i_++) asm volatile("" : "+r"((x)[i_ / 4][i_ % 4]) :: "memory")
extern "C" __global__ void __launch_bounds__(384, 1) @NAME@(unsigned short* __restrict__ out, float* __restrict__ lse,
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k, const unsigned short* __restrict__ v,
    const __grid_constant__ TmaDesc tmQ, const __grid_constant__ TmaDesc tmK, const __grid_constant__ TmaDesc tmV) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const unsigned sQ = (sm_addr(smem_raw) + 1023) & ~1023u, sK = sQ + BM * D * 2, sV = sK + ST * BN * D * 2;
  const unsigned bars = sV + ST * BN * D * 2;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / (H / HKV);
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;   // the longest causal rows first, over all heads
  int nblocks = (S + BN - 1) / BN;
  if (CAUSAL) { const int last = m0 + BM - 1 + S - T; nblocks = min(nblocks, last < 0 ? 0 : last / BN + 1); }
  if (threadIdx.x == 0) {
    mbar_init(FULL_Q, 1);
    for (int s = 0; s < ST; s++) { mbar_init(FULL_K(s), 1); mbar_init(FULL_V(s), 1); mbar_init(EMPTY(s), 8); }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x < 128) {   // producer warpgroup: one thread issues the copies
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (threadIdx.x == 0) {
      mbar_expect(FULL_Q, BM * D * 2);
      #pragma unroll
      for (int p = 0; p < D / 64; p++) tma3(sQ + p * BM * 128, &tmQ, FULL_Q, 64 * p, m0, bh);
      for (int n = 0; n < nblocks; n++) {
        const int s = n % ST;
        mbar_wait(EMPTY(s), ((n / ST) & 1) ^ 1);
        mbar_expect(FULL_K(s), BN * D * 2);
        #pragma unroll
        for (int p = 0; p < D / 64; p++) tma3(sK + s * BN * D * 2 + p * BN * 128, &tmK, FULL_K(s), 64 * p, n * BN, b * HKV + hk);
        mbar_expect(FULL_V(s), BN * D * 2);
        #pragma unroll
        for (int p = 0; p < D / 64; p++) tma3(sV + s * BN * D * 2 + p * BN * 128, &tmV, FULL_V(s), 64 * p, n * BN, b * HKV + hk);
      }
    }
    return;
  }
  // two consumer warpgroups of 64 query rows; they take turns on the tensor cores (named barriers 1 and 2):
  // one issues its products while the other computes its softmax
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int wg = (threadIdx.x >> 7) - 1, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
  const int r0 = wg * 64 + warp * 16;                 // this warp's first row in the tile
  float o[D / 2], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  #pragma unroll
  for (int i = 0; i < D / 2; i++) o[i] = 0.f;
  unsigned p[BN / 16][4];
  // scores of tile n -> masked, exponentiated in place against the running max; alpha rescales what came before
  auto softmax = [&](float (&sc)[BN / 2], int n, float (&alpha)[2]) {
    const int n0 = n * BN;
    if (n0 + BN > S || (CAUSAL && n0 + BN - 1 > m0 + wg * 64 + S - T)) {
      #pragma unroll
      for (int j = 0; j < BN / 8; j++)
        #pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = n0 + j * 8 + tq * 2 + (e & 1), row = m0 + r0 + gr + (e >> 1) * 8;
          if (key >= S || (CAUSAL && key > row + S - T)) sc[4 * j + e] = -INFINITY;
        }
    }
    #pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      float rm = -INFINITY;
      #pragma unroll
      for (int j = 0; j < BN / 8; j++) rm = fmaxf(rm, fmaxf(sc[4 * j + 2 * hh], sc[4 * j + 2 * hh + 1]));
      rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 1));
      rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 2));
      const float mnew = fmaxf(mx[hh], rm * SCALE_LOG2);
      const float base = mnew == -INFINITY ? 0.f : mnew;
      alpha[hh] = ex2(mx[hh] - base);
      mx[hh] = mnew;
      l[hh] *= alpha[hh];
      #pragma unroll
      for (int j = 0; j < BN / 8; j++) {
        sc[4 * j + 2 * hh] = ex2(fmaf(sc[4 * j + 2 * hh], SCALE_LOG2, -base));
        sc[4 * j + 2 * hh + 1] = ex2(fmaf(sc[4 * j + 2 * hh + 1], SCALE_LOG2, -base));
        l[hh] += sc[4 * j + 2 * hh] + sc[4 * j + 2 * hh + 1];
      }
    }
  };
  auto pack = [&](const float (&sc)[BN / 2]) {
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      p[kk][0] = pack2(sc[8 * kk], sc[8 * kk + 1]); p[kk][1] = pack2(sc[8 * kk + 2], sc[8 * kk + 3]);
      p[kk][2] = pack2(sc[8 * kk + 4], sc[8 * kk + 5]); p[kk][3] = pack2(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };
  auto scores = [&](float (&sc)[BN / 2], int s) {   // S = Q K^T, issued
    WG_FENCE();
    #pragma unroll
    for (int ks = 0; ks < D / 16; ks++) wg_qk(sc, KDESC(sQ, BM, wg * 64, ks), KDESC(sK + s * BN * D * 2, BN, 0, ks), ks);
    WG_COMMIT();
  };
  auto accumulate = [&](int n) {   // O += P V for tile n, issued once its V has landed
    const int s = n % ST;
    mbar_wait(FULL_V(s), (n / ST) & 1);
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wg_pv(o, p[kk], MDESC(sV + s * BN * D * 2, BN, 0, kk), 1);
    WG_COMMIT();
  };
  if (wg == 1) bar_arrive(1, 256);   // warpgroup 0 goes first
  mbar_wait(FULL_Q, 0);
  if (nblocks > 0) {
    float sc[BN / 2], alpha[2];
    mbar_wait(FULL_K(0), 0);
    bar_sync(1 + wg, 256);
    scores(sc, 0);
    bar_arrive(2 - wg, 256);
    WG_WAIT0();
    KEEP_F(sc, BN / 2);
    softmax(sc, 0, alpha);
    pack(sc);
  }
  for (int n = 1; n < nblocks; n++) {   // S of tile n on the tensor cores with O += P V of tile n - 1 behind it
    const int s = n % ST;
    float sc[BN / 2], alpha[2];
    mbar_wait(FULL_K(s), (n / ST) & 1);
    bar_sync(1 + wg, 256);
    scores(sc, s);
    accumulate(n - 1);
    bar_arrive(2 - wg, 256);
    WG_WAIT1();
    KEEP_F(sc, BN / 2);
    softmax(sc, n, alpha);
    WG_WAIT0();
    KEEP_F(o, D / 2);
    KEEP_R(p, BN / 4);
    if (lane == 0) mbar_arrive(EMPTY((n - 1) % ST));   // tile n - 1 is done: its stage goes back to the producer
    #pragma unroll
    for (int j = 0; j < D / 8; j++) {
      o[4 * j] *= alpha[0]; o[4 * j + 1] *= alpha[0]; o[4 * j + 2] *= alpha[1]; o[4 * j + 3] *= alpha[1];
    }
    pack(sc);
  }
  if (nblocks > 0) {   // the last tile's O += P V
    WG_FENCE();
    accumulate(nblocks - 1);
    WG_WAIT0();
    KEEP_F(o, D / 2);
  }
  if (wg == 0) bar_sync(1, 256);   // the other warpgroup's last turn
  store_rows(out + (long long)bh * T * D, lse + (long long)bh * T, m0 + r0 + gr, tq, l, mx, [&](int j, int e) { return o[4 * j + e]; });
}
"""

BACKWARD90 = r"""
extern "C" __global__ void __launch_bounds__(NT, 1) @NAME@(float* __restrict__ dq_all, unsigned short* __restrict__ dk_all,
    unsigned short* __restrict__ dv_all, const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, const unsigned short* __restrict__ dout, const float* __restrict__ lse,
    const float* __restrict__ delta) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const unsigned sK = (sm_addr(smem_raw) + 1023) & ~1023u, sV = sK + BN * D * 2;
  const unsigned sQ = sV + BN * D * 2, sdO = sQ + 2 * BM * D * 2;   // 2 stages each
  const unsigned sdS = sdO + 2 * BM * D * 2;                       // dS^T: BN rows of BM queries (BM = 64: one panel)
  float* Ll = (float*)(smem_raw + (sdS + BN * BM * 2 - sm_addr(smem_raw)));   // 2 stages of BM log-sum-exps
  float* Dl = Ll + 2 * BM;                                                      // 2 stages of BM deltas
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
  const int bhk = blockIdx.x, b = bhk / HKV, hk = bhk % HKV;
  const int n0 = blockIdx.y * BN, kr = wg * 64 + warp * 16;   // this warp's first key in the tile
  const long long kvoff = (long long)bhk * S * D;
  unsigned short* dk_out = dk_all + kvoff;
  unsigned short* dv_out = dv_all + kvoff;
  const QueryTiles<BM> tiles(b, hk, n0);
  load_tile<BN>(sK, k + kvoff, n0, S);
  load_tile<BN>(sV, v + kvoff, n0, S);
  auto prefetch = [&](int it, int st) {
    const int bh = tiles.head(it), m0 = tiles.row0(it);
    load_tile<BM>(sQ + st * BM * D * 2, q + (long long)bh * T * D, m0, T);
    load_tile<BM>(sdO + st * BM * D * 2, dout + (long long)bh * T * D, m0, T);
    for (int r = threadIdx.x; r < BM; r += NT) {
      const bool ok = m0 + r < T;
      cp_async4(sm_addr(Ll + st * BM + r), ok ? lse + (long long)bh * T + m0 + r : lse, ok ? 4 : 0);
      cp_async4(sm_addr(Dl + st * BM + r), ok ? delta + (long long)bh * T + m0 + r : delta, ok ? 4 : 0);
    }
  };
  if (tiles.iters > 0) prefetch(0, 0);
  cp_commit();
  float dk[D / 2], dv[D / 2];
  #pragma unroll
  for (int i = 0; i < D / 2; i++) dk[i] = dv[i] = 0.f;
  for (int it = 0; it < tiles.iters; it++) {
    cp_wait<0>();
    PROXY_FENCE();
    __syncthreads();   // stage it landed; every thread is done with iteration it - 1 (its stage and dS^T)
    if (it + 1 < tiles.iters) prefetch(it + 1, (it + 1) & 1);
    cp_commit();
    const int st = it & 1;
    const int bh = tiles.head(it), m0 = tiles.row0(it);
    const unsigned Qc = sQ + st * BM * D * 2, dOc = sdO + st * BM * D * 2;
    // S^T = K Q^T and dP^T = V dO^T for this warpgroup's 64 keys
    float s[BM / 2], dp[BM / 2];
    WG_FENCE();
    #pragma unroll
    for (int ks = 0; ks < D / 16; ks++) wg_st(s, KDESC(sK, BN, wg * 64, ks), KDESC(Qc, BM, 0, ks), ks);
    #pragma unroll
    for (int ks = 0; ks < D / 16; ks++) wg_st(dp, KDESC(sV, BN, wg * 64, ks), KDESC(dOc, BM, 0, ks), ks);
    WG_COMMIT();
    WG_WAIT0();
    // P^T from the saved log-sum-exp, then dS^T = P^T (dP^T - delta)
    const bool need_mask = n0 + BN > S || (CAUSAL && m0 + S - T < n0 + wg * 64 + 63);
    #pragma unroll
    for (int j = 0; j < BM / 8; j++)
      #pragma unroll
      for (int c = 0; c < 2; c++) {
        const int qc = j * 8 + tq * 2 + c;
        const float lse2 = Ll[st * BM + qc] * 1.4426950408889634f;
        const float dl = Dl[st * BM + qc];
        #pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          float p = ex2(fmaf(s[4 * j + 2 * hh + c], SCALE_LOG2, -lse2));
          if (need_mask) {
            const int key = n0 + kr + gr + hh * 8, qi = m0 + qc;
            if (key >= S || (CAUSAL && key > qi + S - T)) p = 0.f;
          }
          s[4 * j + 2 * hh + c] = p;
          dp[4 * j + 2 * hh + c] = p * (dp[4 * j + 2 * hh + c] - dl);
        }
      }
    unsigned ap[BM / 16][4], as[BM / 16][4];
    #pragma unroll
    for (int kk = 0; kk < BM / 16; kk++)
      #pragma unroll
      for (int i = 0; i < 4; i++) {
        ap[kk][i] = pack2(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
        as[kk][i] = pack2(dp[8 * kk + 2 * i], dp[8 * kk + 2 * i + 1]);
      }
    // dV += P^T dO, dK += dS^T Q (scaled at the end)
    WG_FENCE();
    #pragma unroll
    for (int kk = 0; kk < BM / 16; kk++) {
      wg_acc(dv, ap[kk], MDESC(dOc, BM, 0, kk), 1);
      wg_acc(dk, as[kk], MDESC(Qc, BM, 0, kk), 1);
    }
    WG_COMMIT();
    // dS^T to shared memory (registers i: rows +8 for odd i, columns +8 for i >= 2)
    #pragma unroll
    for (int kk = 0; kk < BM / 16; kk++)
      #pragma unroll
      for (int i = 0; i < 4; i++) {
        const int r = kr + gr + (i & 1) * 8, c = kk * 16 + (i >> 1) * 8 + tq * 2;
        asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(sdS + SWZ(r, c, BN)), "r"(as[kk][i]) : "memory");
      }
    PROXY_FENCE();
    __syncthreads();
    // dQ[:, 64 wg : 64 wg + 64] = dS K (A: dS^T read M-major; B: K read MN-major)
    float dq[32];
    WG_FENCE();
    #pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wg_dq(dq, sdesc(sdS + kk * 2048, BN * 128, 1024), MDESC(sK, BN, wg, kk), kk);
    WG_COMMIT();
    WG_WAIT0();
    float* dqp = dq_all + (long long)bh * T * D;
    #pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int qi = m0 + warp * 16 + gr + hh * 8;
      if (qi >= T) continue;
      #pragma unroll
      for (int j = 0; j < 8; j++)
        red_add2(dqp + (long long)qi * D + wg * 64 + j * 8 + tq * 2, dq[4 * j + 2 * hh] * SCALE, dq[4 * j + 2 * hh + 1] * SCALE);
    }
  }
  cp_wait<0>();
  #pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    const int key = n0 + kr + gr + hh * 8;
    if (key >= S) continue;
    #pragma unroll
    for (int j = 0; j < D / 8; j++) {
      *(unsigned*)(dk_out + (long long)key * D + j * 8 + tq * 2) = pack2(dk[4 * j + 2 * hh] * SCALE, dk[4 * j + 2 * hh + 1] * SCALE);
      *(unsigned*)(dv_out + (long long)key * D + j * 8 + tq * 2) = pack2(dv[4 * j + 2 * hh], dv[4 * j + 2 * hh + 1]);
    }
  }
}
"""


def render_forward(kern, fname: str, grid, head: str):
  """The forward kernel for AttentionForward `kern` (`head`: its defines and the shared prelude): a producer
  warpgroup and two consumers, q / k / v read through tensor maps of (D, rows, heads) boxes of 64 columns."""
  from ..codegen.cuda import Rendered, TensorMap
  from ..codegen.cuda_wgmma import HOPPER, tma_fn
  b, h, hkv, t, s, d, bm = kern.b, kern.h, kern.hkv, kern.t, kern.s, kern.d, kern.BM
  dt = kern.dtype.name
  maps = (TensorMap(2, dt, (d, t, b * h), (d, t * d), (64, bm, 1), 0),    # arguments: out, lse, q, k, v
          TensorMap(3, dt, (d, s, b * hkv), (d, s * d), (64, BN_FWD, 1), 0),
          TensorMap(4, dt, (d, s, b * hkv), (d, s * d), (64, BN_FWD, 1), 0))
  src = (head + f"#define BM {bm}\n#define BN {BN_FWD}\n#define ST {STAGES_FWD}\n" + HOPPER + tma_fn(3) + COMMON90
         + helpers(kern._mma_t(), d, BN_FWD) + FORWARD90.replace("@NAME@", fname))
  smem = 1023 + (bm + 2 * STAGES_FWD * BN_FWD) * d * 2 + 8 * (1 + 3 * STAGES_FWD)
  return Rendered(src, grid, (384, 1, 1), smem, "sm_90a", tmaps=maps)


def render_backward(kern, fname: str, grid, head: str, zero: int):
  """The D = 128 backward kernel for AttentionBackward `kern` (`head`: its defines and the shared prelude;
  `zero`: bytes of dQ cleared before each launch)."""
  from ..codegen.cuda import Rendered
  from ..codegen.cuda_wgmma import HOPPER
  bn, d = kern.BN, kern.d
  src = (head + f"#define BM {BM_BWD}\n#define BN {bn}\n" + HOPPER + COMMON90 + helpers(kern._mma_t(), d, BN_FWD)
         + BACKWARD90.replace("@NAME@", fname))
  smem = 1023 + (2 * bn + 4 * BM_BWD) * d * 2 + bn * BM_BWD * 2 + 4 * BM_BWD * 4
  return Rendered(src, grid, (256, 1, 1), smem, "sm_90a", zero_output=zero)
