"""The Hopper (sm_90a) matrix product: wgmma fed by TMA, for bf16 x bf16 and f16 x f16 contractions whose
operands the tensor-copy engine can read (each one contiguous along K or along M/N, 16-byte aligned).

A persistent grid (one CTA per SM) walks the output tiles (BM x BN = 128 x 256, or 128 x 128 when N <= 128)
in groups of GROUP row tiles, so that neighbouring CTAs share operand panels in L2; batches are part of the
tile index. Each CTA has three warpgroups: warpgroup 0 (one thread) issues cp.async.bulk.tensor copies of
BK = 64 wide K slices into a ring of STAGES shared-memory stages, completing on a `full` mbarrier per stage;
warpgroups 1 and 2 take 64 rows each, run wgmma.m64nBNk16 on the stage (fp32 accumulators in registers,
one wgmma group kept in flight) and give the stage back through its `empty` mbarrier. A bf16/f16 output
with 16-byte aligned rows is written through a staging tile per consumer in shared memory and copied out by
the copy engine, which runs on while the next tile's products start (3 stages of 128 x 256 fit beside it);
any other output is stored straight from the registers (bounds-checked, pairs of elements when aligned).
Tensor maps use the 128-byte swizzle, so a K-major operand is rows of 64 K-elements and an M/N-major one
blocks of 64 x 64; the wgmma descriptors describe exactly those layouts. Edges need no code: the copy
engine reads zeros outside the tensor and writes nothing there. The maps are encoded at launch with the
buffers' addresses (codegen/cuda.TensorMap, runtime/cuda.py).
"""
from __future__ import annotations
from ..dtypes import dtypes
from .gemm import Gemm
from .cstyle import STORAGE, store_expr

BM, BK, GROUP = 128, 64, 16
SMEM_LIMIT = 220 * 1024
# descriptor byte offsets by K-major?: K-major rows of 128 bytes in 8-row groups (leading offset unused);
# M/N-major 64 x 64 blocks: 8192 bytes to the next 64 along M/N, 1024 to the next 8 along K
_LBO, _SBO = {True: 16, False: 8192}, {True: 1024, False: 1024}


def render(name: str, g: Gemm, k, sms: int):
  """A Rendered wgmma kernel for `g`, or None when an operand cannot be read by the tensor-copy engine."""
  from .cuda import Rendered, HEADER, TensorMap
  ta, to = k.inputs[g.a].dtype, k.output.dtype
  BN = 128 if g.N <= 128 else 256
  bext = [e[0] for e in g.batch]
  a = _operand(g.M, g.K, g.sa[0], g.sa[1], g.oa, [(e[0], e[1]) for e in g.batch], BM)
  b = _operand(g.N, g.K, g.sb[1], g.sb[0], g.ob, [(e[0], e[2]) for e in g.batch], BN)
  if a is None or b is None: return None
  tm, tn = -(-g.M // BM), -(-g.N // BN)
  tiles = tm * tn
  for e in bext: tiles *= e
  if tiles >= 2**31: return None
  # the output through shared memory and the copy engine when it can write it (rows contiguous, 16-byte aligned)
  c = _operand(g.M, g.N, g.scm, g.scn, g.oc, [(e[0], e[3]) for e in g.batch], 64) if to in (dtypes.bfloat16, dtypes.float16) else None
  c = c if c is not None and c[0] else None
  staging = 2 * BN * 128 if c else 0
  stage = (BM + BN) * BK * 2
  stages = min(6, (SMEM_LIMIT - staging) // stage)
  dt = "bf16" if ta is dtypes.bfloat16 else "f16"
  pair = to.itemsize in (2, 4) and g.scn == 1 and g.scm % 2 == 0 and g.oc % 2 == 0 and all(e[3] % 2 == 0 for e in g.batch)
  defs = {"MM": g.M, "NN": g.N, "KT": -(-g.K // BK), "TM": tm, "TN": tn, "TILES": tiles, "BN": BN, "ST": stages,
          "A_BYTES": BM * BK * 2, "B_BYTES": BN * BK * 2, "C_BYTES": BN * 128, "STAGING": int(bool(c)), "STAGE_BYTES": stage,
          "SCM": f"{g.scm}LL", "SCN": f"{g.scn}LL",
          "A_STEP": 32 if a[0] else 2048, "B_STEP": 32 if b[0] else 2048, "A_LBO": _LBO[a[0]], "B_LBO": _LBO[b[0]],
          "A_SBO": _SBO[a[0]], "B_SBO": _SBO[b[0]],
          "OT": STORAGE[to], "PAIR": int(pair)}
  src = (HEADER + "".join(f"#define {key} {val}\n" for key, val in defs.items()) + f"#define STORE(x) {store_expr(to, '(x)')}\n"
         + PRELUDE + "".join(tma_fn(r) for r in sorted({len(a[1].dims), len(b[1].dims)}))
         + (_tma_store_fn(len(c[1].dims)) if c else "") + _wgmma_fn(BN, dt, int(not a[0]), int(not b[0])))
  args = [f"{STORAGE[to]}* __restrict__ out"] + [f"const {STORAGE[x.dtype]}* __restrict__ in{i}" for i, x in enumerate(k.inputs)]
  args += ["const __grid_constant__ TmaDesc tmA", "const __grid_constant__ TmaDesc tmB"] + (["const __grid_constant__ TmaDesc tmC"] if c else [])
  epi = EPI_TMA.replace("@STOREC@", _stores(c, BN)) if c else EPI_DIRECT
  body = (KERNEL.replace("@NAME@", name).replace("@ARGS@", ", ".join(args)).replace("@DECODE@", _decode(g, bext))
          .replace("@LOADA@", _loads(a, "tmA", "sA + s * A_BYTES", "m0", BM)).replace("@LOADB@", _loads(b, "tmB", "sB + s * B_BYTES", "n0", BN))
          .replace("@EPILOGUE@", epi).replace("@DRAIN@", DRAIN if c else ""))
  maps = (TensorMap(1 + g.a, ta.name, *a[1].encoding()), TensorMap(1 + g.b, ta.name, *b[1].encoding()))
  maps += (TensorMap(0, to.name, *c[1].encoding()),) if c else ()
  smem = stages * stage + staging + 1024 + 2 * 8 * stages
  return Rendered(src + body, (max(1, min(sms, tiles)), 1, 1), (384, 1, 1), smem, "sm_90a", tmaps=maps)


class _Map:
  """The dims of one operand's tensor map, innermost first: (role, extent, stride in elements, box), role
  'k', 'r' (the M or N axis) or a batch axis number."""
  def __init__(self, dims, offset: int): self.dims, self.offset = dims, offset

  def encoding(self):
    d = self.dims
    return tuple(x[1] for x in d), tuple(x[2] for x in d[1:]), tuple(x[3] for x in d), self.offset


def _operand(R: int, K: int, s_r: int, s_k: int, off: int, batch, BR: int):
  """(K-major?, _Map) for an operand (or the output) of R rows by K (element (r, k) at off + r*s_r + k*s_k,
  batch axes (extent, stride)), or None when the copy engine cannot reach it: the contiguous axis must have
  stride 1, the others 16-byte multiples that do not overlap (a tensor map's rule), the start 16-byte
  aligned, at most 5 dims."""
  if off % 8: return None
  if s_k == 1: inner, rest = ("k", K, 1, BK), [("r", R, s_r, BR)]
  elif s_r == 1: inner, rest = ("r", R, 1, 64), [("k", K, s_k, BK)]
  else: return None
  rest += [(i, e, s, 1) for i, (e, s) in enumerate(batch) if e > 1 and s != 0]
  dims, span = [inner], inner[1]
  for d in sorted((d for d in rest if d[1] > 1), key=lambda d: d[2]):
    if d[2] % 8 or d[2] < span: return None
    dims.append(d); span = d[2] * d[1]
  for d in (d for d in rest if d[1] <= 1):   # an axis of extent 1: any stride past the others
    span = -(-span // 8) * 8
    dims.append((d[0], d[1], span, d[3]))
  return (s_k == 1, _Map(dims, off)) if len(dims) <= 5 else None


def _loads(op, tmap: str, dst: str, r0: str, BR: int) -> str:
  """Copies of one stage of an operand: one box when K-major, BR/64 boxes of 64 x 64 when M/N-major."""
  kmajor, m = op
  coord = lambda d, j: {"k": "k0", "r": f"{r0} + {64 * j}"}.get(d[0], f"b{d[0]}")
  n = 1 if kmajor else BR // 64
  return "".join(f"tma{len(m.dims)}({dst} + {8192 * j}, &{tmap}, full(s), {', '.join(coord(d, j) for d in m.dims)});\n" for j in range(n))


def _stores(c, BN: int) -> str:
  """Copies of a consumer warpgroup's staged 64 x BN output tile to memory, one per 64 x 64 box."""
  coord = lambda d, j: {"k": f"n0 + {64 * j}", "r": "m0 + w * 64"}.get(d[0], f"b{d[0]}")
  dims = c[1].dims
  return "".join(f"tma_store{len(dims)}(&tmC, stg + {8192 * j}, {', '.join(coord(d, j) for d in dims)});\n" for j in range(BN // 64))


def _decode(g: Gemm, bext) -> str:
  """Tile index t -> batch indices b0.., row tile origin m0 and column origin n0 (grouped order)."""
  lines = ["const int in_b = (int)(t % (TM * TN));"] + (["long long bz = t / (TM * TN);"] if bext else [])
  for i in reversed(range(len(bext))):
    lines.append(f"const int b{i} = (int)(bz % {bext[i]}); bz /= {bext[i]};")
  offc = "+".join([f"{g.oc}LL"] + [f"b{i}*({e[3]}LL)" for i, e in enumerate(g.batch)])
  lines += [f"const int grp = in_b / ({GROUP} * TN), first = grp * {GROUP}, gsz = min(TM - first, {GROUP}), w_in = in_b % ({GROUP} * TN);",
            "const int m0 = (first + w_in % gsz) * BM, n0 = (w_in / gsz) * BN;", f"const long long offc = {offc};",
            "(void)offc; (void)m0; (void)n0;"]
  return "\n".join(lines)


def tma_fn(rank: int) -> str:
  cs = ", ".join(f"int c{i}" for i in range(rank))
  regs = ", ".join(f"%{i + 3}" for i in range(rank))
  ins = ", ".join(f'"r"(c{i})' for i in range(rank))
  return (f"static __device__ __forceinline__ void tma{rank}(unsigned dst, const TmaDesc* map, unsigned bar, {cs}) {{\n"
          f'  asm volatile("cp.async.bulk.tensor.{rank}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {{{regs}}}], [%2];"\n'
          f'               :: "r"(dst), "l"((unsigned long long)map), "r"(bar), {ins} : "memory");\n}}\n')


def _tma_store_fn(rank: int) -> str:
  cs = ", ".join(f"int c{i}" for i in range(rank))
  regs = ", ".join(f"%{i + 2}" for i in range(rank))
  ins = ", ".join(f'"r"(c{i})' for i in range(rank))
  return (f"static __device__ __forceinline__ void tma_store{rank}(const TmaDesc* map, unsigned src, {cs}) {{\n"
          f'  asm volatile("cp.async.bulk.tensor.{rank}d.global.shared::cta.bulk_group [%0, {{{regs}}}], [%1];"\n'
          f'               :: "l"((unsigned long long)map), "r"(src), {ins} : "memory");\n}}\n')


def _wgmma_fn(BN: int, dt: str, ta: int, tb: int) -> str:
  """wgmma.m64nBNk16 with fp32 accumulators d[BN/2] += A (descriptor) x B (descriptor); ta/tb: M/N-major."""
  n = BN // 2
  regs = ", ".join(f"%{i}" for i in range(n))
  outs = ", ".join(f'"+f"(d[{i}])' for i in range(n))
  return (f"static __device__ __forceinline__ void wgmma(float (&d)[{n}], unsigned long long da, unsigned long long db) {{\n"
          f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n"\n'
          f'    "wgmma.mma_async.sync.aligned.m64n{BN}k16.f32.{dt}.{dt} {{{regs}}}, %{n}, %{n + 1}, p, 1, 1, {ta}, {tb};\\n}}"\n'
          f'    : {outs}\n    : "l"(da), "l"(db));\n}}\n')


# what Hopper kernels fed by the copy engine share (the attention kernels too): the tensor map parameter,
# mbarriers, named barriers and the shared-memory matrix descriptor
HOPPER = r"""
struct __align__(64) TmaDesc { unsigned long long v[16]; };
static __device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}
static __device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  } while (!done);
}
// named barrier `id` over n threads: bar_sync waits for the count, bar_arrive only counts
static __device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(n) : "memory"); }
static __device__ __forceinline__ void bar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(n) : "memory"); }
// a shared-memory matrix descriptor: 128-byte swizzle, leading / stride byte offsets
static __device__ __forceinline__ unsigned long long sdesc(unsigned addr, unsigned lbo, unsigned sbo) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
"""

PRELUDE = r"""
#define BM 128
#define BK 64
#define NACC (BN / 2)
""" + HOPPER

KERNEL = r"""
extern "C" __global__ void __launch_bounds__(384, 1) @NAME@(@ARGS@) {
  extern __shared__ unsigned char smem_raw[];
  const unsigned sA = ((unsigned)__cvta_generic_to_shared(smem_raw) + 1023) & ~1023u, sB = sA + ST * A_BYTES, sC = sB + ST * B_BYTES;
  const unsigned bars = sC + STAGING * 2 * C_BYTES;
  #define full(s) (bars + 8 * (s))
  #define empty(s) (bars + 8 * (ST + (s)))
  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; s++) { mbar_init(full(s), 1); mbar_init(empty(s), 8); }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x < 128) {   // producer warpgroup: one thread issues the copies
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x == 0) {
      int it = 0;
      for (long long t = blockIdx.x; t < TILES; t += gridDim.x) {
        @DECODE@
        for (int kt = 0; kt < KT; kt++, it++) {
          const int s = it % ST, k0 = kt * BK;
          mbar_wait(empty(s), ((it / ST) & 1) ^ 1);
          mbar_expect(full(s), STAGE_BYTES);
          @LOADA@
          @LOADB@
        }
      }
    }
  } else {   // two consumer warpgroups, 64 rows each
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    const int w = threadIdx.x / 128 - 1, warp = (threadIdx.x / 32) & 3, lane = threadIdx.x & 31, t128 = threadIdx.x & 127;
    (void)sC; (void)t128;
    float d[NACC];
    int it = 0;
    for (long long t = blockIdx.x; t < TILES; t += gridDim.x) {
      @DECODE@
      #pragma unroll
      for (int i = 0; i < NACC; i++) d[i] = 0.f;
      for (int kt = 0; kt < KT; kt++, it++) {
        const int s = it % ST;
        mbar_wait(full(s), (it / ST) & 1);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        #pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
          wgmma(d, sdesc(sA + s * A_BYTES + w * 8192 + ks * A_STEP, A_LBO, A_SBO), sdesc(sB + s * B_BYTES + ks * B_STEP, B_LBO, B_SBO));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        if (kt > 0 && lane == 0) mbar_arrive(empty((it - 1) % ST));
      }
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      if (KT > 0 && lane == 0) mbar_arrive(empty((it - 1) % ST));
      @EPILOGUE@
    }
    @DRAIN@
  }
}
"""

# the consumer's epilogue, straight from the registers
EPI_DIRECT = r"""
      const int r = m0 + w * 64 + warp * 16 + (lane >> 2), c0 = n0 + (lane & 3) * 2;
      #pragma unroll
      for (int j = 0; j < NACC / 4; j++) {
        const int c = c0 + 8 * j;
        #pragma unroll
        for (int h = 0; h < 2; h++) {
          const int rr = r + 8 * h;
          if (rr >= MM) continue;
          OT* o = out + offc + rr * SCM + c * SCN;
          const float x = d[4 * j + 2 * h], y = d[4 * j + 2 * h + 1];
          if (PAIR && c + 1 < NN) {
            struct __align__(2 * sizeof(OT)) { OT e[2]; } p;
            p.e[0] = STORE(x); p.e[1] = STORE(y);
            *(decltype(p)*)o = p;
          } else {
            if (c < NN) o[0] = STORE(x);
            if (c + 1 < NN) o[SCN] = STORE(y);
          }
        }
      }
"""

# the consumer's epilogue through its staging tile (BN/64 boxes of 64 x 64, 128-byte swizzled as the tensor map
# reads them; conflict-free 4-byte stores) and the copy engine, which clips at the tensor's edges; the copy
# runs on while the next tile's products start, and the staging tile is reused once it has been read
EPI_TMA = r"""
      const unsigned stg = sC + w * C_BYTES;
      if (t128 == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      bar_sync(1 + w, 128);
      #pragma unroll
      for (int j = 0; j < NACC / 4; j++)
        #pragma unroll
        for (int h = 0; h < 2; h++) {
          const int rr = warp * 16 + (lane >> 2) + 8 * h;
          struct __align__(4) { OT e[2]; } p;
          p.e[0] = STORE(d[4 * j + 2 * h]); p.e[1] = STORE(d[4 * j + 2 * h + 1]);
          const unsigned addr = stg + (j / 8) * 8192 + rr * 128 + (((j % 8) ^ (rr % 8)) * 16) + (lane & 3) * 4;
          asm volatile("st.shared.b32 [%0], %1;" :: "r"(addr), "r"(*(const unsigned*)&p) : "memory");
        }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      bar_sync(1 + w, 128);
      if (t128 == 0) {
        @STOREC@
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      }
"""

# the last output copies complete before the CTA exits
DRAIN = r"""if (t128 == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");"""
