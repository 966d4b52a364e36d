"""Tensor API beyond single ops: creation, laziness, autograd controls, devices, random numbers,
dropout, kernel fusion counts, and errors in the user's terms."""
import math
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, no_grad, train
from trainer.core import realize as R
from trainer.core.ops import Op


def kernels(): return R.stats["kernels"]


# ---- creation ----
def test_zeros_ones_full():
  z = Tensor.zeros(3, 4)
  assert z.shape == (3, 4) and z.dtype == dtypes.float32
  np.testing.assert_array_equal(z.numpy(), np.zeros((3, 4)))
  np.testing.assert_array_equal(Tensor.ones((2, 5), dtype="bfloat16").numpy(), np.ones((2, 5)))
  assert Tensor.ones(2, dtype="int8").dtype == dtypes.int8
  f = Tensor.full((2, 3), 2.5)
  np.testing.assert_array_equal(f.numpy(), np.full((2, 3), 2.5))
  assert Tensor.full((2,), 7).dtype == dtypes.int32
  np.testing.assert_array_equal((Tensor.full((2, 3), 1.5) + Tensor.ones(3)).numpy(), np.full((2, 3), 2.5))
  x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
  np.testing.assert_array_equal(x.zeros_like().numpy(), np.zeros((2, 3)))
  np.testing.assert_array_equal(x.ones_like().numpy(), np.ones((2, 3)))
  np.testing.assert_array_equal(x.full_like(-1).numpy(), np.full((2, 3), -1.0))
  assert Tensor.zeros(0, 3).numpy().shape == (0, 3)
  assert Tensor.full((2,), 1 + 2 ** -8, dtype="bfloat16").tolist() == [1.0, 1.0]   # a constant reads back as stored
  assert Tensor.full((2,), 300, dtype="int8").tolist() == [44, 44]                   # integers wrap
  assert (Tensor.full((2,), 300, dtype="int8") + 0).tolist() == [44, 44]
  assert Tensor.zeros().shape == () and Tensor.zeros().item() == 0.0


def test_arange_eye():
  np.testing.assert_array_equal(Tensor.arange(7).numpy(), np.arange(7))
  assert Tensor.arange(7).dtype == dtypes.int32
  np.testing.assert_array_equal(Tensor.arange(2, 13, 3).numpy(), np.arange(2, 13, 3))
  np.testing.assert_array_equal(Tensor.arange(5, -4, -2).numpy(), np.arange(5, -4, -2))
  np.testing.assert_allclose(Tensor.arange(0.5, 2.0, 0.25).numpy(), np.arange(0.5, 2.0, 0.25))
  assert Tensor.arange(0.5, 2.0, 0.25).dtype == dtypes.float32
  np.testing.assert_array_equal(Tensor.arange(4, dtype="int64").numpy(), np.arange(4))
  assert Tensor.arange(0).shape == (0,)
  np.testing.assert_array_equal(Tensor.eye(4).numpy(), np.eye(4))
  np.testing.assert_array_equal(Tensor.eye(3, 5).numpy(), np.eye(3, 5))
  np.testing.assert_array_equal(Tensor.eye(1).numpy(), np.eye(1))


def test_from_numpy_and_lists():
  for dt in (np.float32, np.float16, np.int8, np.int32, np.int64, np.uint8, np.bool_):
    a = (np.arange(12).reshape(3, 4) % 5).astype(dt)
    t = Tensor(a)
    np.testing.assert_array_equal(t.numpy(), a)
    assert t.numpy().dtype == a.dtype
  np.testing.assert_array_equal(Tensor([[1.5, 2], [3, 4]]).numpy(), [[1.5, 2], [3, 4]])
  assert Tensor([[1.5, 2], [3, 4]]).dtype == dtypes.float32
  nc = np.arange(20, dtype=np.float32).reshape(4, 5)[::2, ::-1]     # non-contiguous numpy input
  np.testing.assert_array_equal(Tensor(nc).numpy(), nc)
  assert Tensor(3.5).item() == 3.5 and Tensor(3.5).shape == ()
  assert Tensor(np.float32(2.0)).shape == ()
  assert Tensor([]).shape == (0,)
  with pytest.raises((TypeError, ValueError)): Tensor([[1, 2], [3]])   # ragged


def test_rand_randn_randint():
  Tensor.manual_seed(0)
  u = Tensor.rand(200, 50).numpy()
  assert u.shape == (200, 50) and u.dtype == np.float32
  assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
  assert len(np.unique(u)) > 9000
  n = Tensor.randn(200, 50).numpy()
  assert abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03 and np.isfinite(n).all()
  assert Tensor.randn(3, dtype="bfloat16").dtype == dtypes.bfloat16
  r = Tensor.randint(-3, 5, size=(4000,))
  assert r.dtype == dtypes.int32
  rv = r.numpy()
  assert rv.min() == -3 and rv.max() == 4 and set(np.unique(rv)) == set(range(-3, 5))
  assert Tensor.randint(10, (3, 3)).shape == (3, 3)
  a, b = Tensor.rand(100).numpy(), Tensor.rand(100).numpy()
  assert not np.array_equal(a, b)
  assert Tensor.rand(3, requires_grad=True).requires_grad


def test_manual_seed_reproducible():
  Tensor.manual_seed(42)
  a = [Tensor.rand(5, 7).numpy(), Tensor.randn(3).numpy(), Tensor.randint(0, 100, (6,)).numpy()]
  Tensor.manual_seed(42)
  b = [Tensor.rand(5, 7).numpy(), Tensor.randn(3).numpy(), Tensor.randint(0, 100, (6,)).numpy()]
  for x, y in zip(a, b): np.testing.assert_array_equal(x, y)
  Tensor.manual_seed(43)
  assert not np.array_equal(Tensor.rand(5, 7).numpy(), a[0])


def test_dropout():
  x = Tensor.ones(100, 100)
  assert x.dropout(0.5) is x                             # not training: identity
  with train():
    Tensor.manual_seed(1)
    y = x.dropout(0.25).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    Tensor.manual_seed(1)
    np.testing.assert_array_equal(x.dropout(0.25).numpy(), y)   # deterministic under manual_seed
    assert not np.array_equal(x.dropout(0.25).numpy(), y)       # the stream moves on
    w = Tensor(np.full((50, 40), 2.0, np.float32), requires_grad=True)
    Tensor.manual_seed(2)
    out = w.dropout(0.5)
    out.sum().backward()
    mask = out.numpy() != 0
    np.testing.assert_allclose(w.grad.numpy(), mask * 2.0)
    assert x.dropout(0.0) is x


# ---- laziness ----
def test_lazy_until_needed():
  a = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
  k0 = kernels()
  b = (a * 2 + 1).exp().sum(1)
  assert kernels() == k0 and not b.lazydata.realized          # only a graph so far
  assert b.lazydata.op is Op.REDUCE or b.lazydata.base.op is not Op.BUFFER
  b.realize()
  assert b.lazydata.realized and kernels() > k0
  k1 = kernels()
  np.testing.assert_allclose(b.numpy(), np.exp(np.arange(12).reshape(3, 4) * 2 + 1).sum(1), rtol=1e-5)
  assert kernels() == k1                                      # already realized: nothing re-runs
  c = a.sum()
  assert isinstance(c.item(), float) and c.item() == 66.0
  assert a[1].tolist() == [4.0, 5.0, 6.0, 7.0]
  assert Tensor(np.array([1, 2], np.int32)).tolist() == [1, 2]
  with pytest.raises(ValueError, match="one element"): a.item()
  d = a + 1
  Tensor.realize_all(d, d * 2)
  assert d.lazydata.realized


def test_detach_no_grad():
  x = Tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
  y = x * x.detach()
  assert not x.detach().requires_grad
  y.sum().backward()
  np.testing.assert_allclose(x.grad.numpy(), [1, 2, 3])           # only the non-detached path
  with no_grad():
    z = x * 2
    assert not z.requires_grad and z._ctx is None
  assert (x * 2).requires_grad
  x.grad = None
  (x * 2 + (x * 3).detach()).sum().backward()
  np.testing.assert_allclose(x.grad.numpy(), [2, 2, 2])


def test_grad_accumulates_and_shared_subexpressions():
  x = Tensor(np.array([1.0, -2.0], np.float32), requires_grad=True)
  h = x * 3
  (h * h + h).sum().backward()
  np.testing.assert_allclose(x.grad.numpy(), 2 * 9 * np.array([1.0, -2.0]) + 3)
  (x * 1).sum().backward()
  np.testing.assert_allclose(x.grad.numpy(), 2 * 9 * np.array([1.0, -2.0]) + 4)
  with pytest.raises(ValueError, match="scalar"): (x * 2).backward()


# ---- devices ----
def test_to_other_device():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  x = Tensor(a, requires_grad=True)
  y = x.to("CPU:1")
  assert y.device == "CPU:1" and x.device == "CPU:0"
  z = (y * 2).T.to("cpu:2")
  assert z.device == "CPU:2"
  np.testing.assert_array_equal(z.numpy(), a.T * 2)
  w = Tensor(np.ones((3, 2), np.float32), device="CPU:2")
  (z * w).sum().backward()
  assert x.grad.device == "CPU:0"
  np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))
  assert x.to("CPU:0") is x
  np.testing.assert_array_equal(x.to("CPU:1").to("CPU:0").numpy(), a)
  b = Tensor(a, dtype="bfloat16").to("CPU:3")
  assert b.dtype == dtypes.bfloat16
  np.testing.assert_array_equal(b.numpy(), a)
  np.testing.assert_array_equal(x[:, 1:].to("CPU:1").numpy(), a[:, 1:])          # a view is copied as its values
  with pytest.raises(ValueError, match="different devices"): x + y
  with pytest.raises(ValueError, match="different devices"): x @ y.T


# ---- fusion ----
def delta(fn):
  fn()  # compile once
  k = kernels(); fn(); return kernels() - k


def test_kernel_counts():
  r = np.random.default_rng(0)
  a, b, c = (Tensor(r.standard_normal((33, 17)).astype(np.float32)).realize() for _ in range(3))
  assert delta(lambda: (a * b + c).relu().sum().realize()) == 1
  assert delta(lambda: a.softmax(-1).realize()) <= 3
  assert delta(lambda: a.log_softmax(-1).realize()) <= 3
  assert delta(lambda: (((a * 2 + b).exp() - c).sqrt() * a + 1).sigmoid().realize()) == 1    # 6+ elementwise ops
  assert delta(lambda: (a.T * 2 + 1).flip(0).relu().realize()) == 1
  assert delta(lambda: (a @ b.T).realize()) == 1
  assert delta(lambda: (a.sum(1, keepdim=True) * 2).realize()) == 1
  np.testing.assert_allclose((a * b + c).relu().sum().item(), np.maximum(a.numpy() * b.numpy() + c.numpy(), 0).sum(), rtol=1e-4)


def test_kernel_count_reduce_epilogue_through_reshape():
  a = Tensor(np.ones((33, 17), np.float32)).realize()
  assert delta(lambda: (a.sum(1) * 2).realize()) == 1


# ---- errors in the user's terms ----
def test_errors():
  a, b = Tensor(np.ones((3, 4), np.float32)), Tensor(np.ones((5,), np.float32))
  with pytest.raises(ValueError, match=r"add.*\(3, 4\).*\(5,\)"): a + b
  with pytest.raises(ValueError, match=r"mul.*\(3, 4\).*\(5,\)"): a * b
  with pytest.raises(ValueError, match=r"where.*\(3, 4\).*\(5,\)"): a.where(a > 0, b)
  with pytest.raises(ValueError, match=r"maximum.*\(3, 4\).*\(5,\)"): a.maximum(b)
  with pytest.raises(ValueError, match=r"matmul.*\(3, 4\).*\(5,\)"): a @ b
  with pytest.raises(TypeError, match="unsupported dtype 'float128'"): Tensor.ones(2, dtype="float128")
  with pytest.raises(ValueError, match="unknown device 'TPU:0'"): Tensor([1.0], device="TPU:0")
  with pytest.raises(ValueError, match="unknown device"): Tensor([1.0]).to("gpu")
  with pytest.raises(ValueError, match="device"): Tensor([1.0], device="CPU:x")
  with pytest.raises(TypeError, match="0-d"): len(Tensor(1.0))
