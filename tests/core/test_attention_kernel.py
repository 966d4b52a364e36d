"""Fused attention kernels (trainer/core/kernels/attention.py): on the CPU (their C kernels, and on the interpreter
their numpy references) through the autograd Function against the composed scaled_dot_product_attention and finite
differences; their CUDA C compiled for sm_90a (wgmma) and sm_80 (mma.sync); on a GPU the kernels against the CPU's
composed path."""
import os
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from trainer.core.kernels.attention import AttentionForward, AttentionBackward, AttentionDelta, flash_attention, covers
from trainer.core.runtime import cuda as rc

# (B, H, Hkv, T, S, D, causal)
CASES = [(1, 2, 2, 5, 5, 8, False), (2, 4, 2, 7, 11, 8, True), (1, 6, 2, 13, 9, 4, False), (2, 3, 1, 1, 6, 8, True),
         (2, 6, 2, 45, 45, 24, True), (1, 3, 1, 37, 50, 40, False)]   # several blocks of query rows, partial vectors


def _inputs(seed, b, h, hkv, t, s, d):
  r = np.random.default_rng(seed)
  return [r.standard_normal(shape).astype(np.float32) for shape in ((b, h, t, d), (b, hkv, s, d), (b, hkv, s, d), (b, h, t, d))]


def composed(q, k, v, is_causal=False, scale=None):
  """The composed path with the kernels' bottom-right causal mask (query t sees keys s <= t + S - T) spelled out:
  torch's is_causal, which scaled_dot_product_attention follows, is the top-left one."""
  T, S = q.shape[-2], k.shape[-2]
  mask = Tensor(np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T), device=q.device) if is_causal else None
  return q.scaled_dot_product_attention(k, v, mask, scale=scale, enable_gqa=True)


def _run(fn, arrays, device="CPU:0", dtype="float32", **kw):
  q, k, v = (Tensor(a, dtype=dtype, device=device, requires_grad=True) for a in arrays[:3])
  out = fn(q, k, v, **kw)
  (out.float() * Tensor(arrays[3], device=device)).sum().backward()
  return [x.float().numpy() for x in (out, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize("case", CASES)
def test_reference_function_matches_composed(case):
  *shape, causal = case
  arrays = _inputs(0, *shape)
  scale = 0.3 if shape[-1] == 4 else None
  ours = _run(flash_attention, arrays, is_causal=causal, scale=scale)
  want = _run(composed, arrays, is_causal=causal, scale=scale)
  for name, a, w in zip(("out", "dq", "dk", "dv"), ours, want):
    np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_reference_function_bf16_and_leading_axes():
  arrays = _inputs(1, 2, 4, 2, 9, 12, 16)
  arrays = [a.reshape((1,) + a.shape) for a in arrays]
  ours = _run(flash_attention, arrays, dtype="bfloat16", is_causal=True)
  want = _run(composed, arrays, dtype="bfloat16", is_causal=True)
  for name, a, w in zip(("out", "dq", "dk", "dv"), ours, want):
    np.testing.assert_allclose(a, w, rtol=0.05, atol=0.05 * np.abs(w).max(), err_msg=name)


def test_rows_with_no_visible_key_are_zero():
  arrays = _inputs(2, 1, 2, 1, 8, 5, 8)     # causal, T > S: queries 0..2 see no key
  out, dq, dk, dv = _run(flash_attention, arrays, is_causal=True)
  want = _run(composed, arrays, is_causal=True)
  assert np.all(out[:, :, :3] == 0) and np.all(dq[:, :, :3] == 0)
  for name, a, w in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):    # the composed path zeroes those rows too
    np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_backward_reference_matches_finite_differences():
  b, h, hkv, t, s, d = 1, 4, 2, 6, 7, 5
  q, k, v, g = (x.astype(np.float64) for x in _inputs(3, b, h, hkv, t, s, d))
  fwd, bwd = AttentionForward(b, h, hkv, t, s, d, True, 0.7, dtypes.float32), AttentionBackward(b, h, hkv, t, s, d, True, 0.7, dtypes.float32)
  loss = lambda q, k, v: float((fwd.reference(q, k, v)[0] * g).sum())
  out, lse = fwd.reference(q, k, v)
  grads = bwd.reference(q, k, v, g, lse, (out * g).sum(-1))
  r, eps = np.random.default_rng(4), 1e-6
  for i, x in enumerate((q, k, v)):
    for _ in range(6):
      idx = tuple(r.integers(0, n) for n in x.shape)
      args = [q, k, v]
      up, dn = [a.copy() for a in args], [a.copy() for a in args]
      up[i][idx] += eps; dn[i][idx] -= eps
      np.testing.assert_allclose(grads[i][idx], (loss(*up) - loss(*dn)) / (2 * eps), rtol=1e-5, atol=1e-7)


class _OnCuda:   # what covers() reads of a tensor, on a CUDA device
  def __init__(self, *shape): self.shape, self.ndim, self.dtype, self.device = shape, len(shape), dtypes.bfloat16, "CUDA:0"


def test_covers_cuda_half_precision_and_any_float_on_the_cpu():
  q = Tensor(np.zeros((1, 2, 4, 24), np.float32), dtype="bfloat16")
  assert covers(q, q, q) and covers(q.float(), q.float(), q.float())   # the CPU's C kernels take any float type and D
  assert not covers(_OnCuda(1, 2, 4, 24), _OnCuda(1, 2, 4, 24), _OnCuda(1, 2, 4, 24))   # CUDA: D 64 or 128 only
  assert not covers(q, q, q.float())




def test_covers_leaves_masks_dropout_and_non_square_causal_to_the_composed_path():
  q, kv, kv_long = _OnCuda(1, 4, 16, 64), _OnCuda(1, 2, 16, 64), _OnCuda(1, 2, 24, 64)
  assert covers(q, kv, kv) and covers(q, kv, kv, is_causal=True) and covers(q, kv_long, kv_long)
  assert not covers(q, kv, kv, attn_mask=Tensor(np.ones((16, 16), bool)))
  assert not covers(q, kv, kv, dropout_p=0.1)
  assert not covers(q, kv_long, kv_long, is_causal=True)    # the kernels align causal masks bottom right, torch top left


# ---------------------------------------------------------------------------------------------- CUDA
needs_compiler = pytest.mark.skipif(rc.compiler_version() is None, reason="no CUDA compiler (NVRTC or nvcc) found")


@needs_compiler
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])     # the wgmma kernels (built for sm_90a) and the mma.sync ones
@pytest.mark.parametrize("cls", [AttentionForward, AttentionDelta, AttentionBackward])
@pytest.mark.parametrize("d,dtype,causal", [(128, dtypes.bfloat16, True), (64, dtypes.bfloat16, False), (128, dtypes.float16, False)])
def test_kernels_compile(cls, d, dtype, causal, arch):
  r = cls(2, 8, 2, 1000, 777, d, causal, 0.125, dtype).render_cuda("k0", arch)
  assert rc.compile_cuda(r.src, r.arch or arch)[:4] == b"\x7fELF"


DEV = os.environ.get("TRAINER_TEST_GPU_DEVICE", "CUDA:0")
gpu = pytest.mark.skipif(DEV.startswith("CUDA") and rc.cuda_device_count() == 0, reason="no CUDA device")


@gpu
@pytest.mark.parametrize("case", [(1, 4, 4, 77, 77, 64, True), (2, 8, 2, 200, 200, 128, True), (1, 4, 1, 129, 300, 128, False),
                                  (2, 2, 2, 300, 131, 64, False), (1, 6, 2, 257, 513, 128, True)])
def test_gpu_kernels_match_cpu_composed(case):
  *shape, causal = case
  arrays = _inputs(5, *shape)
  arrays[:3] = [Tensor(a, dtype="bfloat16").float().numpy() for a in arrays[:3]]   # the same bf16 values on both sides
  q = Tensor(arrays[0], dtype="bfloat16", device=DEV)
  assert covers(q, q[:, :shape[2]], q[:, :shape[2]])
  ours = _run(flash_attention, arrays, device=DEV, dtype="bfloat16", is_causal=causal)
  want = _run(composed, arrays, is_causal=causal)
  for name, a, w in zip(("out", "dq", "dk", "dv"), ours, want):
    err = np.abs(a - w).max() / np.abs(w).max()
    assert err < 2e-2, f"{name}: max|diff|/max|ref| {err:.2e}"


@gpu
@pytest.mark.parametrize("mask_shape,causal", [((2, 1, 77, 130), False), ((77, 130), False), ((2, 4, 77, 130), False), (None, True)])
def test_gpu_sdpa_with_masks_and_non_square_causal_matches_cpu(mask_shape, causal):
  """On CUDA, scaled_dot_product_attention with a bool mask (broadcast over heads as torch's, B == Hkv == 2 here) or a
  non-square causal call takes the composed path: the same answer as the CPU's."""
  arrays = _inputs(6, 2, 4, 2, 77, 130, 64)
  arrays[:3] = [Tensor(a, dtype="bfloat16").float().numpy() for a in arrays[:3]]
  mask = np.random.default_rng(7).random(mask_shape) > 0.3 if mask_shape else None
  sdpa = lambda q, k, v: q.scaled_dot_product_attention(k, v, Tensor(mask, device=q.device) if mask is not None else None, is_causal=causal, enable_gqa=True)
  ours = _run(sdpa, arrays, device=DEV, dtype="bfloat16")
  want = _run(sdpa, arrays)
  for name, a, w in zip(("out", "dq", "dk", "dv"), ours, want):
    err = np.abs(a - w).max() / np.abs(w).max()
    assert err < 2e-2, f"{name}: max|diff|/max|ref| {err:.2e}"
