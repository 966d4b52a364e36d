"""The CUDA backend.

Without a GPU (CI): the CUDA C of a representative set of kernels is rendered and compiled to a CUBIN
for sm_90 with NVRTC (or nvcc), so codegen breakage shows up here; skipped when no CUDA compiler exists.
With a GPU: ops run on CUDA:0 and are compared with the CPU backend's results (skipped without one).
"""
import os
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, jit, where
from trainer.core import device as D, random as R
from trainer.core.schedule import create_schedule, Kernel
from trainer.core.codegen import cuda as cg
from trainer.core.runtime import cuda as rc
from trainer.core.dtypes import bf16_to_f32, f32_to_bf16


@pytest.fixture(params=["c"], autouse=True)
def backend(request):   # overrides conftest's c/interp pair: the CPU side here is only the reference
  D.set_cpu_backend("c")
  yield "c"


def _kernels(t: Tensor):
  return [it for it in create_schedule([t.lazydata]) if isinstance(it, Kernel)]


def _cases():
  r = np.random.default_rng(0)
  f = lambda *s: r.standard_normal(s).astype(np.float32)
  a, b = Tensor(f(64, 96)), Tensor(f(96, 48))
  h, hb = Tensor(f(64, 96), dtype="bfloat16"), Tensor(f(96, 48), dtype="bfloat16")
  f16 = Tensor(f(64, 96), dtype="float16")
  idx = Tensor(np.arange(1000, dtype=np.uint32))
  zero = Tensor.full((1000,), 0, dtype=dtypes.uint32)
  return {
    "elementwise": (a * 2 + a.exp()).sqrt(),
    "bf16_pad_mask": (h.pad(((1, 1), (2, 0))) * 3).exp2().log2().sin(),
    "f16": f16 * 2 + 1,
    "int_where_cast": a.where(a > 0, 0).cast(dtypes.int32) * 3 // 2,
    "sum_rows": a.sum(axis=1),
    "sum_cols": a.sum(axis=0),
    "max_bf16": h.amax(axis=1),
    "sum_all": a.sum(),
    "softmax": a.softmax(-1),
    "matmul_f32": a @ b,
    "matmul_bf16": h @ hb,
    "matmul_bf16_bt": h @ h.transpose(0, 1),
    "matmul_bf16_at": hb.transpose(0, 1) @ h.transpose(0, 1),
    "matmul_f16": f16 @ f16.transpose(0, 1),
    "matmul_batched": Tensor(f(3, 64, 32), dtype="bfloat16") @ Tensor(f(3, 32, 40), dtype="bfloat16"),
    "matmul_bf16_unaligned": Tensor(f(33, 45), dtype="bfloat16") @ Tensor(f(45, 21), dtype="bfloat16"),
    "threefry": R.threefry(idx, zero, 1234, 5678)[0],
    "conv_bf16": Tensor(f(2, 8, 9, 9), dtype="bfloat16").conv2d(Tensor(f(16, 8, 3, 3), dtype="bfloat16"), padding=1),
    "conv_f32_strided": Tensor(f(2, 3, 11, 11)).conv2d(Tensor(f(4, 3, 3, 3)), stride=2),
    **_conv_grads(f),
  }


def _conv_grads(f):
  """The gradients of a strided bf16 convolution (its weight's and its input's, per stride residue), lazy."""
  x, w = Tensor(f(2, 8, 9, 9), dtype="bfloat16", requires_grad=True), Tensor(f(16, 8, 3, 3), dtype="bfloat16", requires_grad=True)
  x.conv2d(w, stride=2, padding=1).float().sum().backward()
  return {"conv_grad_weight": w.grad, "conv_grad_input": x.grad}


CASES = list(_cases().keys())
needs_compiler = pytest.mark.skipif(rc.compiler_version() is None, reason="no CUDA compiler (NVRTC or nvcc) found")


@needs_compiler
@pytest.mark.parametrize("case", CASES)
def test_compiles_for_sm90(case):
  t = _cases()[case]
  ks = _kernels(t)
  assert ks
  for i, k in enumerate(ks):
    r = cg.render(k, f"k{i}", "sm_90")
    assert f'extern "C" __global__' in r.src and r.grid[0] >= 1 and 1 <= r.block[0] * r.block[1] <= 1024
    if case.startswith("matmul") and case != "matmul_f32":   # wgmma where TMA can read both operands (16-byte aligned rows)
      wg = case != "matmul_bf16_unaligned"
      assert ("wgmma.mma_async" in r.src, "mma.sync.aligned.m16n8k16" in r.src, r.arch, len(r.tmaps)) == (wg, not wg, "sm_90a" if wg else None, 3 * wg)
    cubin = rc.compile_cuda(r.src, r.arch or "sm_90")
    assert cubin[:4] == b"\x7fELF"
  if case.startswith("conv"):   # the window's several K axes read by the tiled matrix products' loaders, not a loop per output
    assert any("mma.sync.aligned.m16n8k16" in cg.render(k, "k", "sm_90").src or "__shared__ float As" in cg.render(k, "k", "sm_90").src for k in ks)


@needs_compiler
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "int32", "int64", "int8", "uint8", "bool"])
def test_collective_accumulate_compiles(dtype):
  for op, scale in (("sum", None), ("sum", 0.25), ("max", None)):
    r = cg.render_accumulate(getattr(dtypes, dtype), op, scale, "acc", 132)
    assert rc.compile_cuda(r.src, "sm_90")[:4] == b"\x7fELF"


def _matmul_render(x, y, arch="sm_90"):
  (k,) = _kernels(x @ y)
  return cg.render(k, "k", arch)


def test_wgmma_tensor_maps():
  """The tensor maps of the Hopper path: innermost the contiguous axis, batch axes sorted by stride, broadcast
  ones dropped, the output's too when the copy engine can write it; operands TMA cannot read (a row pitch not a
  multiple of 16 bytes) and other GPUs take mma.sync."""
  r = np.random.default_rng(0)
  t = lambda *s: Tensor(r.standard_normal(s).astype(np.float32), dtype="bfloat16")
  a, b = _matmul_render(t(300, 520), t(520, 264)).tmaps[:2]
  assert (a.dims, a.strides, a.box, b.dims, b.strides, b.box) == ((520, 300), (520,), (64, 128), (264, 520), (264,), (64, 64))
  a, b = _matmul_render(t(520, 304).transpose(0, 1), t(264, 520).transpose(0, 1)).tmaps[:2]   # M-major A, K-major B
  assert (a.dims, a.box, b.dims, b.box) == ((304, 520), (64, 64), (520, 264), (64, 256))
  a, b = _matmul_render(t(3, 2, 64, 40), t(3, 1, 40, 72)).tmaps[:2]   # B broadcast over axis 1: folded into M
  assert (a.dims, a.strides, b.dims, b.strides) == ((40, 128, 3), (40, 5120), (72, 40, 3), (72, 2880))
  a, b = _matmul_render(t(2, 64, 40), t(3, 1, 40, 72)).tmaps[:2]   # and A over axis 0: no such dim in its map
  assert (a.dims, a.strides, b.dims, b.strides) == ((40, 128), (40,), (72, 40, 3), (72, 2880))
  q = t(64, 4, 32).permute(1, 0, 2)   # heads of a (T, H, D) tensor: the batch stride is under the row stride
  a = _matmul_render(q, q.transpose(1, 2)).tmaps[0]
  assert (a.dims, a.strides) == ((32, 4, 64), (32, 128))
  c = _matmul_render(t(300, 520), t(520, 264)).tmaps[2]   # the output, written by the copy engine
  assert (c.arg, c.dims, c.strides, c.box) == (0, (264, 300), (264,), (64, 64))
  assert len(_matmul_render(t(64, 128), t(36, 128).transpose(0, 1)).tmaps) == 2   # rows of 72 bytes: stored directly
  assert not _matmul_render(t(64, 100), t(100, 64)).tmaps
  assert not _matmul_render(t(64, 128), t(128, 64), "sm_80").tmaps


def test_device_count_without_driver_is_not_an_error():
  n = D.device_count("CUDA")
  assert isinstance(n, int) and n >= 0
  if n == 0:
    assert rc.cuda_unavailable_reason()
    with pytest.raises(rc.CUDAError, match="CUDA"): rc.CUDARuntime("CUDA:0", 0)


# ---------------------------------------------------------------------------------------------- on a GPU
# TRAINER_TEST_GPU_DEVICE=CPU:3 runs these checks' logic without a GPU
DEV = os.environ.get("TRAINER_TEST_GPU_DEVICE", "CUDA:0")
gpu = pytest.mark.skipif(DEV.startswith("CUDA") and rc.cuda_device_count() == 0, reason=f"no CUDA device ({rc.cuda_unavailable_reason()})")


def _both(fn, *arrays, dtype="float32"):
  """fn on CPU:0 and on CUDA:0 with the same inputs: (cpu result, cuda result) as float64 numpy."""
  out = []
  for dev in ("CPU:0", DEV):
    ts = [Tensor(a, dtype=dtype, device=dev) for a in arrays]
    res = fn(*ts)
    assert res.device == dev
    out.append(np.asarray(res.numpy(), dtype=np.float64))
  return out


def _r(*shape, seed=0): return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_gpu_elementwise(dtype):
  x, y = _r(1000, 37), _r(1000, 37, seed=1)
  c, g = _both(lambda a, b: where(a > 0, (a * b + 1).exp2() - a.abs().sqrt() * b.sin(), b.abs().log() * 3), x, y, dtype=dtype)
  tol = 1e-5 if dtype == "float32" else 2e-2
  np.testing.assert_allclose(g, c, rtol=tol, atol=tol)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_gpu_vector_path_offsets_and_tails(dtype):
  x = _r(100003)
  for fn in (lambda a: a * 2 + 1, lambda a: a[8:] * 3, lambda a: a[3:] - a[:-3], lambda a: (a * 0.5).cast(dtypes.bfloat16),
             lambda a: a.cast(dtypes.float32) + a[0]):
    c, g = _both(fn, x, dtype=dtype)
    np.testing.assert_allclose(g, c, rtol=1e-6, atol=1e-6)


def _row_cases():
  """Kernels of several axes whose last one is contiguous in the output: the vector path per row, with loads
  broadcast along it (a row's statistic, a label), contiguous, strided, masked, misaligned, and int."""
  return [
    ((300, 520), lambda a: (a - a.amax(axis=1, keepdim=True)).exp() * 2),
    ((64, 1000), lambda a: a * 3 - (Tensor.arange(1000, device=a.device) == (a[:, :1] > 0).cast(dtypes.int32)).cast(a.dtype)),
    ((4, 48, 8, 64), lambda a: (a * a[:1, :1, :, :]).transpose(1, 2) + 1),   # a transposed store
    ((4, 8, 48, 64), lambda a: a.transpose(1, 2) * 0.5 + a.transpose(1, 2).flip(3)),   # strided loads, flipped rows
    ((33, 72), lambda a: a.pad(((0, 0), (8, 0)))[:, :72] * 2 + a),   # a masked load
    ((40, 72), lambda a: a[:, 1:65] * 2 + a[:, 5:69]),   # loads that start misaligned
    ((37, 256), lambda a: (a * 4).cast(dtypes.int32) * 3 + 1),   # a tail of vectors (37 x 256 / 8 not a multiple of 512)
  ]


@needs_compiler
def test_row_vectors_compile_for_sm90():
  r = np.random.default_rng(0)
  vec = 0
  for shape, fn in _row_cases():
    for dtype in ("float32", "bfloat16"):
      for i, k in enumerate(_kernels(fn(Tensor(r.standard_normal(shape).astype(np.float32), dtype=dtype)))):
        src = cg.render(k, f"k{i}", "sm_90").src
        vec += "res.v" in src
        assert rc.compile_cuda(src, "sm_90")[:4] == b"\x7fELF"
  assert vec >= 10   # most of them take the vector path


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_row_vectors(dtype):
  tol = 1e-6 if dtype == "float32" else 8e-3   # exp2 may differ by an ulp between the CPU and the GPU
  for i, (shape, fn) in enumerate(_row_cases()):
    c, g = _both(fn, _r(*shape, seed=i), dtype=dtype)
    np.testing.assert_allclose(g, c, rtol=tol, atol=tol)


@gpu
def test_gpu_views_and_masks():
  x = _r(33, 65)
  c, g = _both(lambda a: a.transpose(0, 1).pad(((2, 3), (1, 0))).flip(0)[1:-1:2] * 2 + 1, x)
  np.testing.assert_array_equal(g, c)
  c, g = _both(lambda a: a[:, ::3].reshape(-1)[5:500].cast(dtypes.int32) + 7, x)
  np.testing.assert_array_equal(g, c)


@gpu
@pytest.mark.parametrize("shape,axis", [((300, 513), 1), ((300, 513), 0), ((5, 70000), 1), ((70000, 3), 0), ((1 << 20,), None), ((4, 5, 6), (0, 2)), ((128, 7), 1)])
def test_gpu_reductions(shape, axis):
  x = _r(*shape)
  c, g = _both(lambda a: a.sum(axis=axis), x)
  np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-3)
  c, g = _both(lambda a: a.amax(axis=axis), x)
  np.testing.assert_array_equal(g, c)


@gpu
def test_gpu_softmax_and_int_reduce():
  x = _r(64, 1000)
  c, g = _both(lambda a: a.softmax(-1), x)
  np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
  c, g = _both(lambda a: (a > 0).cast(dtypes.int32).sum(axis=1), x)
  np.testing.assert_array_equal(g, c)


@gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("M,N,K", [(128, 128, 64), (130, 70, 40), (1, 300, 256), (257, 129, 1000), (64, 8, 3)])
def test_gpu_matmul(dtype, M, N, K):
  a, b = _r(M, K), _r(K, N, seed=1)
  ref = np.asarray(bf16_to_f32(f32_to_bf16(a)), np.float64) @ np.asarray(bf16_to_f32(f32_to_bf16(b)), np.float64) if dtype == "bfloat16" else None
  for views in [(lambda x: x, lambda y: y), (lambda x: x, lambda y: y.transpose(0, 1).contiguous().transpose(0, 1)),
                (lambda x: x.transpose(0, 1).contiguous().transpose(0, 1), lambda y: y)]:
    c, g = _both(lambda x, y: views[0](x) @ views[1](y), a, b, dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else dict(rtol=2e-2, atol=3e-2 * np.sqrt(K) / 4)
    np.testing.assert_allclose(g, c, **tol)
    if ref is not None: np.testing.assert_allclose(g, ref, rtol=2e-2, atol=3e-2 * np.sqrt(K) / 4)


@gpu
def test_gpu_batched_and_strided_matmul():
  a, b = _r(3, 2, 40, 24), _r(3, 1, 24, 56, seed=1)
  c, g = _both(lambda x, y: x @ y, a, b, dtype="bfloat16")
  np.testing.assert_allclose(g, c, rtol=2e-2, atol=5e-2)
  c, g = _both(lambda x, y: x[:, :, ::2, 1:] @ y[:, :, 1:, ::3], a, b, dtype="bfloat16")
  np.testing.assert_allclose(g, c, rtol=2e-2, atol=5e-2)


def _ref(x, y): return np.asarray(bf16_to_f32(f32_to_bf16(x)), np.float64) @ np.asarray(bf16_to_f32(f32_to_bf16(y)), np.float64)


@gpu
@pytest.mark.parametrize("M,N,K", [(304, 264, 520), (136, 96, 72), (136, 100, 72), (1, 256, 64), (520, 1000, 136), (64, 8, 8)])
def test_gpu_wgmma_matmul(M, N, K):
  """The Hopper path (on other GPUs the fallback) over odd edges and every operand layout, against float64."""
  a, b = _r(M, K), _r(K, N, seed=1)
  ref = _ref(a, b)
  T = lambda x: x.transpose(0, 1).contiguous().transpose(0, 1)
  for va, vb in [(lambda x: x, lambda y: y), (T, T), (lambda x: x, T), (T, lambda y: y)]:
    g = (va(Tensor(a, dtype="bfloat16", device=DEV)) @ vb(Tensor(b, dtype="bfloat16", device=DEV))).numpy().astype(np.float64)
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 8e-3


@gpu
def test_gpu_wgmma_batched_and_fp16():
  a, b = _r(3, 2, 136, 40), _r(3, 1, 40, 200, seed=1)
  g = (Tensor(a, dtype="bfloat16", device=DEV) @ Tensor(b, dtype="bfloat16", device=DEV)).numpy().astype(np.float64)
  ref = _ref(a, b)
  assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 8e-3
  x = _r(64, 4, 32, seed=2)   # attention scores over the heads of a (T, H, D) tensor
  q = Tensor(x, dtype="bfloat16", device=DEV).permute(1, 0, 2)
  g = (q @ q.transpose(1, 2)).numpy().astype(np.float64)
  xt = x.transpose(1, 0, 2)
  ref = _ref(xt, xt.transpose(0, 2, 1))
  assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 8e-3
  a, b = _r(200, 136, seed=3), _r(136, 72, seed=4)
  g = (Tensor(a, dtype="float16", device=DEV) @ Tensor(b, dtype="float16", device=DEV)).numpy().astype(np.float64)
  ref = a.astype(np.float16).astype(np.float64) @ b.astype(np.float16).astype(np.float64)
  assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 2e-3


@gpu
def test_gpu_random_bits_match_cpu():
  Tensor.manual_seed(7)
  c = Tensor.rand(10007, device="CPU:0").numpy()
  Tensor.manual_seed(7)
  g = Tensor.rand(10007, device=DEV).numpy()
  np.testing.assert_array_equal(g, c)


@gpu
def test_gpu_copies_and_peers():
  x = _r(1000)
  t = Tensor(x, device=DEV)
  np.testing.assert_array_equal(t.to("CPU:1").numpy(), x)
  np.testing.assert_array_equal(Tensor(x, device="CPU:2").to(DEV).numpy(), x)
  if DEV.startswith("CUDA") and rc.cuda_device_count() > 1:
    np.testing.assert_array_equal((t.to("CUDA:1") * 2).to(DEV).numpy(), x * 2)


@gpu
def test_gpu_jit_replay_and_training_step():
  w = Tensor(_r(32, 16), device=DEV).realize()
  w.requires_grad = True
  @jit
  def step(x):
    loss = (x @ w).relu().sum()
    loss.backward()
    w.assign(w - 0.01 * w.grad)
    w.grad = None
    return loss
  ref_w = _r(32, 16).astype(np.float64)
  for i in range(4):
    xs = _r(8, 32, seed=10 + i)
    loss = step(Tensor(xs, device=DEV)).numpy()
    h = xs.astype(np.float64) @ ref_w
    np.testing.assert_allclose(loss, np.maximum(h, 0).sum(), rtol=1e-4)
    ref_w -= 0.01 * xs.T.astype(np.float64) @ (h > 0).astype(np.float64)
  np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-4, atol=1e-5)
