"""Matrix products (the GEMM path of the C backend and the interpreter) with gradients."""
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from opcheck import check, rnd, FLOATS

CASES = [
  ("mm", (7, 13), (13, 5)),
  ("batched", (2, 7, 13), (2, 13, 5)),
  ("broadcast", (2, 1, 7, 3), (3, 3, 5)),
  ("broadcast_w", (2, 7, 13), (13, 5)),
  ("vec_mat", (13,), (13, 5)),
  ("mat_vec", (7, 13), (13,)),
  ("vec_vec", (13,), (13,)),
  ("batch_vec", (3, 7, 13), (13,)),
  ("size1", (1, 13), (13, 1)),
]


@pytest.mark.parametrize("name,sa,sb", CASES, ids=[c[0] for c in CASES])
def test_matmul(name, sa, sb):
  check(np.matmul, lambda a, b: a @ b, rnd(*sa, seed=1), rnd(*sb, seed=2))


@pytest.mark.parametrize("views", [("T", "c"), ("c", "T"), ("T", "T"), ("s", "f"), ("n", "s")])
def test_matmul_views(views):
  check(np.matmul, lambda a, b: a @ b, rnd(7, 6, seed=3), rnd(6, 5, seed=4), views=list(views))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matmul_lowp(dtype):
  tol = dict(rtol=3e-2, atol=6e-2) if dtype == "bfloat16" else dict(rtol=5e-3, atol=1e-2)
  check(np.matmul, lambda a, b: a @ b, rnd(2, 7, 13, seed=5), rnd(13, 5, seed=6), dtype=dtype, tol=tol)


def test_matmul_large_and_fused():
  # bigger than one GEMM tile in every dimension, with the bias add and relu after it
  a, b, c = rnd(100, 300, seed=7), rnd(300, 70, seed=8), rnd(70, seed=9)
  check(lambda x, w, bias: np.maximum(x @ w + bias, 0), lambda x, w, bias: (x @ w + bias).relu(), a, b, c, grad=False,
        tol=dict(rtol=1e-4, atol=1e-4))


def test_matmul_int_and_mixed():
  a = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
  b = np.arange(8, dtype=np.int32).reshape(4, 2)
  out = Tensor(a) @ Tensor(b)
  assert out.dtype == dtypes.int32
  np.testing.assert_array_equal(out.numpy(), a @ b)
  mixed = Tensor(a) @ Tensor(b.astype(np.float32))
  assert mixed.dtype == dtypes.float32
  np.testing.assert_allclose(mixed.numpy(), a @ b)
  np.testing.assert_allclose(Tensor(a.astype(np.float32)).linear(Tensor(b.T.astype(np.float32)), Tensor(np.ones(2, np.float32))).numpy(), a @ b + 1)


def test_matmul_errors():
  with pytest.raises(ValueError, match=r"matmul.*\(3, 4\).*\(5, 2\)"): Tensor(np.ones((3, 4), np.float32)) @ Tensor(np.ones((5, 2), np.float32))
  with pytest.raises(ValueError, match=r"matmul.*\(2, 3, 4\).*\(3, 4, 2\)"): Tensor(np.ones((2, 3, 4), np.float32)) @ Tensor(np.ones((3, 4, 2), np.float32))
  with pytest.raises(ValueError, match="matmul"): Tensor(1.0) @ Tensor(np.ones(3, np.float32))


def test_contraction_of_unmergeable_axes():
  """A product whose M, N and K are each two loop axes that no merge joins (the implicit-GEMM path: offset tables,
  reads in runs), larger than one packed block in every dimension, with its gradients (contractions too)."""
  a, b = rnd(15, 2, 70, 20, seed=12), rnd(20, 3, 15, 200, seed=13)   # A[k1, m1, m2, k2], B[k2, n1, k1, n2]
  A, B = Tensor(a.astype(np.float32), requires_grad=True), Tensor(b.astype(np.float32), requires_grad=True)
  xa = A.permute(1, 2, 0, 3).reshape(2, 70, 1, 1, 15, 20)             # m1, m2, n1, n2, k1, k2
  xb = B.permute(1, 3, 2, 0).reshape(1, 1, 3, 200, 15, 20)
  out = (xa * xb).sum((-2, -1))
  ref = np.einsum("kpqr,rskt->pqst", a, b)
  np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-3)
  g = rnd(*ref.shape, seed=14)
  out.backward(Tensor(g.astype(np.float32)))
  np.testing.assert_allclose(A.grad.numpy(), np.einsum("pqst,rskt->kpqr", g, b), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(B.grad.numpy(), np.einsum("pqst,kpqr->rskt", g, a), rtol=1e-4, atol=1e-3)
  low = (xa.cast("bfloat16") * xb.cast("bfloat16")).sum((-2, -1))   # an output that cannot accumulate across K blocks
  np.testing.assert_allclose(low.float().numpy(), ref, rtol=3e-2, atol=1.0)


def test_long_k_small_output():
  """A product with a long K and few output tiles (a weight gradient), whose threads each sum a part of K, into
  float32, bfloat16 and transposed outputs."""
  a, b = rnd(700, 11, seed=15), rnd(700, 21, seed=16)
  A, B = Tensor(a.astype(np.float32)), Tensor(b.astype(np.float32))
  np.testing.assert_allclose((A.T @ B).numpy(), a.T @ b, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose((A.T @ B).T.contiguous().numpy(), (a.T @ b).T, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose((A.T.cast("bfloat16") @ B.cast("bfloat16")).float().numpy(), a.T @ b, rtol=3e-2, atol=0.5)
