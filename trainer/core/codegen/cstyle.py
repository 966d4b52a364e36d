"""Expressions in C syntax, shared by the C (CPU) and CUDA C renderers: element types, loads and
stores with their conversions, and the ALU ops. Floating types compute in float32."""
from __future__ import annotations
from ..dtypes import dtypes, DType
from ..ops import Op

STORAGE = {dtypes.bool: "unsigned char", dtypes.uint8: "unsigned char", dtypes.int8: "signed char", dtypes.uint32: "unsigned int",
           dtypes.int32: "int", dtypes.int64: "long long", dtypes.float16: "half", dtypes.bfloat16: "unsigned short", dtypes.float32: "float"}


def ctype(dt: DType) -> str:
  """The type an element is computed in."""
  return "float" if dt.is_float else STORAGE[dt]


def load_expr(dt: DType, ref: str) -> str:
  if dt is dtypes.bfloat16: return f"bf2f({ref})"
  if dt is dtypes.float16: return f"((float){ref})"
  return ref


def store_expr(dt: DType, val: str) -> str:
  if dt is dtypes.bfloat16: return f"f2bf({val})"
  if dt is dtypes.float16: return f"((half){val})"
  if dt is dtypes.bool: return f"(({val})!=0)"
  return val


def literal(value, dt: DType) -> str:
  if dt.is_float:
    v = float(value)
    if v != v: return "NAN"
    if v in (float("inf"), float("-inf")): return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"
  if dt is dtypes.bool: return "1" if value else "0"
  if dt is dtypes.uint32: return f"{int(value) & 0xFFFFFFFF}u"
  if dt is dtypes.int64: return f"{int(value)}ll"
  return f"({int(value)})"


def max_expr(a: str, b: str, dt: DType) -> str:
  """max(a, b) as torch.maximum: a NaN on either side is the result (a > b ? a : b alone returns b for a NaN a)."""
  if dt.is_float: return f"(({a})>({b})||({a})!=({a})?({a}):({b}))"
  return f"(({a})>({b})?({a}):({b}))"


def alu_expr(op: Op, dt: DType, src_dtypes, a: list) -> str:
  if op is Op.CAST:   # a cast to a narrower float rounds as a store would, also fused inside a kernel
    if dt is dtypes.bool: return f"({a[0]}!=0)"
    if dt.is_float and src_dtypes[0] is dtypes.bool: return f"({a[0]}?1.0f:0.0f)"   # a select: vectorisers take it, not a char's conversion
    if dt is dtypes.bfloat16: return f"bf2f(f2bf((float){a[0]}))"
    if dt is dtypes.float16: return f"((float)(half)(float){a[0]})"
    return f"(({ctype(dt)}){a[0]})"
  unary = {Op.NEG: f"(-{a[0]})", Op.RECIP: f"k_recip({a[0]})", Op.SQRT: f"sqrtf({a[0]})", Op.EXP2: f"k_exp2({a[0]})",
           Op.LOG2: f"k_log2({a[0]})", Op.SIN: f"k_sin({a[0]})"}
  if op in unary:
    if op is Op.NEG and dt is dtypes.bool: return f"(!{a[0]})"
    return unary[op]
  if op is Op.WHERE: return f"({a[0]}?{a[1]}:{a[2]})"
  if op is Op.MAX: return max_expr(a[0], a[1], dt)
  if dt.is_float and op is Op.MOD: return f"__builtin_fmodf({a[0]},{a[1]})"
  if dt.is_float and op is Op.IDIV: return f"__builtin_truncf({a[0]}/{a[1]})"
  sym = {Op.ADD: "+", Op.MUL: "*", Op.IDIV: "/", Op.MOD: "%", Op.CMPLT: "<", Op.CMPEQ: "==", Op.AND: "&", Op.OR: "|",
         Op.XOR: "^", Op.SHL: "<<", Op.SHR: ">>"}[op]
  if op is Op.ADD and dt is dtypes.bool: sym = "|"
  if op is Op.MUL and dt is dtypes.bool: sym = "&"
  return f"({a[0]}{sym}{a[1]})"


# C spellings the CUDA compilers need instead (NVRTC has no __builtin_ math): applied by codegen/cuda.py
# to the PRELUDE and to every expression above, so both backends share one source of truth.
CUDA_SPELLING = {"static inline": "static __device__ __forceinline__", "__builtin_memcpy": "memcpy", "__builtin_floorf": "floorf",
                 "__builtin_rintf": "rintf", "__builtin_fmodf": "fmodf", "__builtin_truncf": "truncf"}


def cuda_spelling(src: str) -> str:
  for a, b in CUDA_SPELLING.items(): src = src.replace(a, b)
  return src


# Branch-free float math the compilers vectorise (libm calls would not be).
PRELUDE = r"""
static inline float k_bits2f(unsigned int u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline unsigned int k_f2bits(float f) { unsigned int u; __builtin_memcpy(&u, &f, 4); return u; }
static inline float bf2f(unsigned short h) { return k_bits2f(((unsigned int)h) << 16); }
static inline unsigned short f2bf(float f) {
  unsigned int u = k_f2bits(f);
  unsigned int r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (unsigned short)(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : r);
}
static inline float k_recip(float x) { return 1.0f / x; }
static inline float k_exp2(float x) {
  float xc = x < -127.0f ? -127.0f : (x > 127.0f ? 127.0f : x);
  float fi = __builtin_floorf(xc), f = xc - fi;
  float p = 2.18775164e-04f;
  p = p * f + 1.23878315e-03f; p = p * f + 9.68457748e-03f; p = p * f + 5.54804291e-02f;
  p = p * f + 2.40230501e-01f; p = p * f + 6.93146929e-01f; p = p * f + 1.0f;
  float r = p * k_bits2f((unsigned int)((int)fi + 127) << 23);
  r = x > 128.0f ? INFINITY : r;
  r = x < -127.0f ? 0.0f : r;
  return x != x ? x : r;
}
static inline float k_log2(float x) {
  int sub = x < 1.17549435e-38f;
  float xs = sub ? x * 8388608.0f : x;
  unsigned int u = k_f2bits(xs);
  int e = (int)((u >> 23) & 255u) - 127 - (sub ? 23 : 0);
  float m = k_bits2f((u & 0x7fffffu) | 0x3f800000u);
  int big = m > 1.41421356f;
  m = big ? m * 0.5f : m; e += big;
  float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  float p = 1.0f / 11.0f;
  p = p * t2 + 1.0f / 9.0f; p = p * t2 + 1.0f / 7.0f; p = p * t2 + 0.2f; p = p * t2 + 1.0f / 3.0f; p = p * t2 + 1.0f;
  float r = (float)e + 2.0f * t * p * 1.44269504089f;
  r = x == 0.0f ? -INFINITY : r;
  r = x < 0.0f ? NAN : r;
  r = x == INFINITY ? INFINITY : r;
  return x != x ? x : r;
}
static inline float k_sin(float x) {
  float q = __builtin_rintf(x * 0.318309886183791f);
  float y = x - q * 3.140625f; y = y - q * 9.67502593994140625e-4f; y = y - q * 1.509957990978376432e-7f;
  float y2 = y * y;
  float p = -2.38894039e-08f;
  p = p * y2 + 2.75252819e-06f; p = p * y2 - 1.98408615e-04f; p = p * y2 + 8.33333098e-03f;
  p = p * y2 - 1.66666666e-01f; p = p * y2 + 1.0f;
  float r = y * p;
  return ((long long)q & 1) ? -r : r;
}
"""
