"""Hand-written CUSTOM kernels (trainer/core/kernels): their numpy meaning on the CPU backends, their
gradients, the graph and JIT around them, their CUDA C compiled for sm_90, and on a GPU the same results."""
import os
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, jit
from trainer.core.custom import CustomKernel
from trainer.core.kernels.rows import take_rows, GatherRows, ScatterAddRows
from trainer.core.kernels.adamw import AdamWStep
from trainer.core.lazy import LazyBuffer
from trainer.core.runtime import cuda as rc
from trainer.core.schedule import create_schedule, CustomItem


def _rows_case(seed, v=37, d=5, shape=(4, 6), idx_dtype=np.int32):
  r = np.random.default_rng(seed)
  table = r.standard_normal((v, d)).astype(np.float32)
  idx = r.integers(0, v, shape).astype(idx_dtype)
  idx.reshape(-1)[0] = v - 1          # the last row, and a row picked several times
  idx.reshape(-1)[-1] = idx.reshape(-1)[1]
  return table, idx, r.standard_normal(shape + (d,)).astype(np.float32)


@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_take_rows_forward_and_gradient(idx_dtype):
  table, idx, g = _rows_case(0, idx_dtype=idx_dtype)
  w = Tensor(table, requires_grad=True)
  out = take_rows(w, Tensor(idx))
  np.testing.assert_array_equal(out.numpy(), table[idx])
  (out * Tensor(g)).sum().backward()
  ref = np.zeros(table.shape, np.float64)
  np.add.at(ref, idx.reshape(-1), g.reshape(-1, table.shape[1]).astype(np.float64))
  np.testing.assert_allclose(w.grad.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_take_rows_bf16_noncontiguous_table_and_out_of_range():
  table, idx, _ = _rows_case(1, v=11, d=9, shape=(13,))
  idx[3], idx[7] = -1, 11
  w = Tensor(table.T.copy(), dtype="bfloat16").transpose(0, 1)    # a transposed (non-contiguous) view
  out = take_rows(w, Tensor(idx)).numpy()
  want = Tensor(table, dtype="bfloat16").numpy()[np.clip(idx, 0, 10)]
  want[[3, 7]] = 0
  np.testing.assert_array_equal(out, want)


def test_take_rows_errors():
  with pytest.raises(ValueError, match="2-d"): take_rows(Tensor(np.ones(3, np.float32)), Tensor(np.zeros(2, np.int32)))
  with pytest.raises(TypeError, match="integers"): take_rows(Tensor(np.ones((3, 2), np.float32)), Tensor(np.zeros(2, np.float32)))


def test_custom_node_is_one_item_and_replays_under_jit():
  table, idx, _ = _rows_case(2)
  w = Tensor(table)
  items = create_schedule([take_rows(w * 2, Tensor(idx)).lazydata])
  assert sum(isinstance(it, CustomItem) for it in items) == 1 and len(items) == 2   # the scaled table, then the gather

  @jit
  def step(i): return (take_rows(w, i) * 3).sum(-1)
  for s in range(4):
    i = np.random.default_rng(s).integers(0, 37, (4, 6)).astype(np.int32)
    np.testing.assert_allclose(step(Tensor(i)).numpy(), (table[i] * 3).sum(-1), rtol=1e-5, atol=1e-5)


def test_embedding_layer_uses_rows_kernel():
  from trainer.nn.layers import Embedding
  e = Embedding(50, 8)
  idx = np.random.default_rng(3).integers(0, 50, (2, 7)).astype(np.int32)
  np.testing.assert_array_equal(e(Tensor(idx)).numpy(), e.weight.numpy()[idx])


class SumProductMax(CustomKernel):
  """x, y (m, n) float32 -> x + y (m, n) float32, x * y (m, n) bfloat16, the row maxima of x (m,) float32."""
  name = "sum_product_max"
  def __init__(self, m, n): self.m, self.n = m, n
  def key(self): return (self.m, self.n)
  def reference(self, x, y): return x + y, x * y, x.max(1)


class SumProductMaxC(SumProductMax):
  """The same in C (the compiled CPU backend runs it; the interpreter runs the reference)."""
  def render_c(self, fname):
    from trainer.core.codegen.cpu import HEADER
    return HEADER + f"""
void {fname}(float* restrict s, unsigned short* restrict p, float* restrict mx, const float* restrict x, const float* restrict y) {{
  for (long long i = 0; i < {self.m}; i++) {{
    float m = x[i * {self.n}];
    for (long long j = 0; j < {self.n}; j++) {{
      const long long e = i * {self.n} + j;
      s[e] = x[e] + y[e]; p[e] = f2bf(x[e] * y[e]); m = x[e] > m ? x[e] : m;
    }}
    mx[i] = m;
  }}
}}
"""


def _outputs(kern, x, y):
  specs = [((3, 5), dtypes.float32), ((3, 5), dtypes.bfloat16), ((3,), dtypes.float32)]
  return [Tensor(o) for o in LazyBuffer.custom(kern, [x.lazydata, y.lazydata], specs)]


@pytest.mark.parametrize("cls", [SumProductMax, SumProductMaxC])
def test_custom_kernel_with_several_outputs(cls):
  r = np.random.default_rng(5)
  x, y = (r.standard_normal((3, 5)).astype(np.float32) + 1 for _ in range(2))
  want = [x + y, Tensor(x * y, dtype="bfloat16").float().numpy(), x.max(1)]
  s, p, mx = _outputs(cls(3, 5), Tensor(x), Tensor(y) * 1)
  assert [t.dtype for t in (s, p, mx)] == [dtypes.float32, dtypes.bfloat16, dtypes.float32]
  items = create_schedule([s.lazydata, mx.lazydata])
  assert [type(it).__name__ for it in items] == ["Kernel", "CustomItem"]   # y * 1, then one launch for all three
  for t, w in zip((s, p, mx), want): np.testing.assert_allclose(t.float().numpy(), w, rtol=1e-6)
  # an output nobody holds (the bfloat16 product) still gets a buffer to write
  s, mx = _outputs(cls(3, 5), Tensor(y), Tensor(x))[::2]
  [item] = create_schedule([s.lazydata])
  assert item.outputs[0] is s.lazydata and item.outputs[1] is None and item.outputs[2] is mx.lazydata
  np.testing.assert_allclose((s * mx.reshape(3, 1)).numpy(), (x + y) * y.max(1)[:, None], rtol=1e-6)

  @jit
  def step(a, b):
    s, p, _ = _outputs(cls(3, 5), a, b)
    return s + p.float()
  for k in range(4):
    a, b = (np.random.default_rng(k).standard_normal((3, 5)).astype(np.float32) for _ in range(2))
    want = a + b + Tensor(a * b, dtype="bfloat16").float().numpy()
    np.testing.assert_allclose(step(Tensor(a), Tensor(b)).numpy(), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- CUDA
needs_compiler = pytest.mark.skipif(rc.compiler_version() is None, reason="no CUDA compiler (NVRTC or nvcc) found")
KERNELS = {
  "gather_bf16_i32": GatherRows(1000, 128256, 2048, dtypes.bfloat16, dtypes.int32),
  "gather_f32_odd": GatherRows(7, 11, 9, dtypes.float32, dtypes.int64),
  "gather_bf16_odd": GatherRows(7, 11, 3, dtypes.bfloat16, dtypes.int64),
  "scatter_bf16": ScatterAddRows(1000, 128256, 2048, dtypes.bfloat16, dtypes.int32),
  "scatter_f32": ScatterAddRows(7, 11, 9, dtypes.float32, dtypes.int64),
  "adamw_bf16_master_scaled": AdamWStep(14336 * 4096, dtypes.bfloat16, dtypes.bfloat16, (0.9, 0.95, 1e-5, True), True),
  "adamw_f32_odd": AdamWStep(7, dtypes.float32, None, (0.9, 0.999, 1e-8, False), False),
  "adamw_f16": AdamWStep(33, dtypes.float16, dtypes.float16, (0.9, 0.999, 1e-8, True), False),
}


@needs_compiler
@pytest.mark.parametrize("name", list(KERNELS))
def test_kernels_compile_for_sm90(name):
  r = KERNELS[name].render_cuda("k0", "sm_90")
  assert rc.compile_cuda(r.src, r.arch or "sm_90")[:4] == b"\x7fELF"


DEV = os.environ.get("TRAINER_TEST_GPU_DEVICE", "CUDA:0")
gpu = pytest.mark.skipif(DEV.startswith("CUDA") and rc.cuda_device_count() == 0, reason="no CUDA device")


@gpu
@pytest.mark.parametrize("dtype,d", [("float32", 9), ("bfloat16", 3), ("bfloat16", 64)])
def test_gpu_take_rows_matches_cpu(dtype, d):
  table, idx, g = _rows_case(4, v=300, d=d, shape=(5, 77), idx_dtype=np.int64)
  idx[0, 0] = -5
  res = []
  for dev in ("CPU:0", DEV):
    w = Tensor(table, dtype=dtype, device=dev, requires_grad=True)
    out = take_rows(w, Tensor(idx, device=dev))
    (out.float() * Tensor(g, device=dev)).sum().backward()
    res.append((out.float().numpy(), w.grad.float().numpy()))
  np.testing.assert_array_equal(res[1][0], res[0][0])
  np.testing.assert_allclose(res[1][1], res[0][1], rtol=1e-2 if dtype == "bfloat16" else 1e-5, atol=1e-2 if dtype == "bfloat16" else 1e-5)


@gpu
@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_adamw_fused_on_device_equals_primitive_ops(param_dtype):
  from trainer.nn import AdamW
  rng = np.random.default_rng(4)
  w0, gs = rng.standard_normal((1000, 37)).astype(np.float32), [rng.standard_normal((1000, 37)).astype(np.float32) for _ in range(3)]
  got = []
  for fused in (True, False):
    p = Tensor(w0, dtype=param_dtype, device=DEV, requires_grad=True)
    opt = AdamW([p], lr=0.01, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, fused=fused)
    for g in gs:
      p.grad = Tensor(g, dtype="bfloat16", device=DEV)
      opt.step(grad_scale=Tensor(np.array([0.7], np.float32), device=DEV))
    got.append((p.numpy(), opt.state[0]["exp_avg_sq"].numpy()))
  np.testing.assert_array_equal(got[0][0], got[1][0])
  np.testing.assert_array_equal(got[0][1], got[1][1])
