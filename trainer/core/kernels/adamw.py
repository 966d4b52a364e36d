"""The AdamW update of one parameter as one kernel, written in place.

As primitive ops the update is four kernels (the two moments, the master weight, its cast to the parameter's
type), each with one output, so the moments are written and read again: about 46 bytes per parameter for
a bfloat16 weight with float32 master and moments. One pass reads the master weight, both moments and the
gradient and writes the three back and the rounded weight: 28 bytes. The kernel computes what the
primitive-op formulation in nn.optim.AdamW computes, operation for operation in float32 (no multiply-add
contraction, a / b as a * (1 / b), e^x as 2^(x log2 e)), so the two paths agree to rounding of the
exponential (see tests/nn/test_optim.py).

  adamw_update(w, m, v, g, scalars, hyper, scale=None, param=None)
    w, m, v: float32 master weight and moments (realized, updated in place); g: the gradient (any float type)
    times `scale` (a one-element float32 tensor, e.g. global-norm clipping's coefficient) if given;
    scalars: the step's float32 (1 - lr*wd, lr/(1-b1^t), 1/sqrt(1-b2^t)), computed by the host in double;
    hyper: (b1, b2, eps, decay?); param: the parameter of a narrower type that receives the new weight rounded
    to its type.

Rendered for the CPU (C) and CUDA; elsewhere the optimizer keeps the primitive-op formulation.
"""
from __future__ import annotations
import math
import numpy as np
from ..custom import CustomKernel
from ..dtypes import DType, dtypes
from ..lazy import LazyBuffer
from ..codegen.cstyle import STORAGE, load_expr, store_expr

BACKENDS = ("CPU", "CUDA")   # devices whose runtime renders the kernel


def renders_on(device: str) -> bool: return device.split(":")[0] in BACKENDS


def _f32(x: float) -> str:
  """x rounded to float32, as an exact C literal."""
  return float(np.float32(x)).hex() + "f"


class AdamWStep(CustomKernel):
  """n elements; g_dtype: the gradient's type; p_dtype: the narrower parameter's type (None: w is the parameter);
  hyper: (beta1, beta2, eps, decay?); scaled: a gradient scale is the last input.
  Inputs w, m, v, g, scalars[, scale]; outputs w, m, v[, param] (written into the inputs' buffers)."""
  name = "adamw_step"

  def __init__(self, n: int, g_dtype: DType, p_dtype: DType | None, hyper: tuple, scaled: bool):
    self.n, self.g_dtype, self.p_dtype, self.hyper, self.scaled = n, g_dtype, p_dtype, tuple(float(h) for h in hyper), scaled

  def key(self): return (self.n, self.g_dtype.name, self.p_dtype and self.p_dtype.name, self.hyper, self.scaled)

  def reference(self, w, m, v, g, scalars, *scale):
    f = np.float32
    b1, b2, eps, decay = self.hyper
    w, m, v, g = (np.asarray(a, np.float32) for a in (w, m, v, g))
    factor, step_size, inv_bc2 = (f(x) for x in scalars.reshape(-1)[:3])
    if scale: g = g * f(scale[0].reshape(-1)[0])
    if decay: w = w * factor
    m = m * f(b1) + g * f(1 - b1)
    v = v * f(b2) + g * g * f(1 - b2)
    denom = np.sqrt(v) * inv_bc2 + f(eps)
    w = w - step_size * m * (f(1) / denom)
    out = (w, m, v)
    return out + (w,) if self.p_dtype is not None else out   # the cast to the parameter's type is the store's

  def _body(self) -> str:
    """C shared by both renderings: `upd(w, m, v, g)`, which updates the float lvalues w, m, v of one element from
    its float gradient g with the step's scalars."""
    b1, b2, eps, decay = self.hyper
    decay = "w = w * factor; " if decay else ""
    return f"""
  #define upd(w, m, v, g) do {{ \\
    {decay}m = m * {_f32(b1)} + (g) * {_f32(1 - b1)}; v = v * {_f32(b2)} + (g) * (g) * {_f32(1 - b2)}; \\
    w = w - step_size * m * k_recip(sqrtf(v) * inv_bc2 + {_f32(eps)}); \\
  }} while (0)
"""

  def _scalar(self, j: str) -> str:
    """Element j, through scalar loads and stores."""
    scale = " * sc" if self.scaled else ""
    store_p = f" p[{j}] = {store_expr(self.p_dtype, 'w')};" if self.p_dtype is not None else ""
    return (f"{{ float w = wi[{j}], m = mi[{j}], v = vi[{j}]; const float g = {load_expr(self.g_dtype, f'gi[{j}]')}{scale};"
            f" upd(w, m, v, g); wo[{j}] = w; mo[{j}] = m; vo[{j}] = v;{store_p} }}")

  def _vector4(self) -> str:
    """Elements 4q .. 4q + 3, through 16-byte (and 8-byte, for 16-bit types) loads and stores (CUDA)."""
    from ..codegen.cuda import VEC_TYPE
    gt, gv = STORAGE[self.g_dtype], VEC_TYPE[4 * self.g_dtype.itemsize]
    scale = " * sc" if self.scaled else ""
    lines = ["float4 w4 = ((const float4*)wi)[q], m4 = ((const float4*)mi)[q], v4 = ((const float4*)vi)[q];",
             f"union {{ {gv} v; {gt} e[4]; }} gl; gl.v = ((const {gv}*)gi)[q];"]
    if self.p_dtype is not None:
      lines.append(f"union {{ {VEC_TYPE[4 * self.p_dtype.itemsize]} v; {STORAGE[self.p_dtype]} e[4]; }} pl;")
    for e, c in enumerate("xyzw"):
      lines.append(f"upd(w4.{c}, m4.{c}, v4.{c}, {load_expr(self.g_dtype, f'gl.e[{e}]')}{scale});")
      if self.p_dtype is not None: lines.append(f"pl.e[{e}] = {store_expr(self.p_dtype, f'w4.{c}')};")
    lines.append("((float4*)wo)[q] = w4; ((float4*)mo)[q] = m4; ((float4*)vo)[q] = v4;")
    if self.p_dtype is not None: lines.append(f"(({VEC_TYPE[4 * self.p_dtype.itemsize]}*)p)[q] = pl.v;")
    return "\n    ".join(lines)

  def _args(self) -> str:
    # outputs alias inputs (w, m, v are updated in place), so no pointer is restrict
    outs = ["float* wo", "float* mo", "float* vo"] + ([f"{STORAGE[self.p_dtype]}* p"] if self.p_dtype is not None else [])
    ins = ["const float* wi", "const float* mi", "const float* vi", f"const {STORAGE[self.g_dtype]}* gi",
           "const float* sp"] + (["const float* scp"] if self.scaled else [])
    return ", ".join(outs + ins)

  def _scalars(self) -> str: return f"const float factor = sp[0], step_size = sp[1], inv_bc2 = sp[2]{', sc = scp[0]' if self.scaled else ''};"

  def render_c(self, fname: str) -> str:
    from ..codegen.cpu import HEADER
    return HEADER + f"""
void {fname}({self._args()}) {{
  {self._scalars()}{self._body()}
  #pragma omp parallel for
  for (long long j = 0; j < {self.n}LL; j++) {self._scalar("j")}
}}
"""

  def render_cuda(self, fname: str, arch: str):
    """Four elements a thread (buffers start 16-byte aligned), the last n % 4 one each; a grid-stride loop."""
    from ..codegen.cuda import Rendered, HEADER
    threads, quads = 256, self.n // 4
    blocks = max(1, min((quads + threads - 1) // threads, 132 * 16))
    src = HEADER + f"""
extern "C" __global__ void __launch_bounds__({threads}) {fname}({self._args()}) {{
  {self._scalars()}{self._body()}
  const long long stride = (long long)gridDim.x * {threads};
  for (long long q = blockIdx.x * {threads}LL + threadIdx.x; q < {quads}LL; q += stride) {{
    {self._vector4()}
  }}
  for (long long j = {4 * quads}LL + blockIdx.x * {threads}LL + threadIdx.x; j < {self.n}LL; j += stride) {self._scalar("j")}
}}
"""
    return Rendered(src, (blocks, 1, 1), (threads, 1, 1), fmad=False)


def adamw_update(w, m, v, g, scalars, hyper: tuple, scale=None, param=None) -> list:
  """One AdamW step of a parameter in one kernel (module docstring); returns the tensors it updates."""
  kern = AdamWStep(math.prod(w.shape), g.dtype, param.dtype if param is not None else None, hyper, scale is not None)
  srcs = [t.lazydata for t in (w, m, v, g, scalars)] + ([scale.lazydata.cast(dtypes.float32)] if scale is not None else [])
  targets = [w, m, v] + ([param] if param is not None else [])
  outs = LazyBuffer.custom(kern, srcs, [(t.shape, t.dtype) for t in targets], into=[t.lazydata for t in targets])
  for t, o in zip(targets, outs): t.lazydata = o
  return targets
