"""Reductions over any axes with keepdim, softmax and log_softmax, with gradients, against float64 numpy."""
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from opcheck import check, rnd, FLOATS


def np_lse(a, axis=None, keepdims=False):
  m = np.max(a, axis=axis, keepdims=True)
  out = np.log(np.exp(a - m).sum(axis=axis, keepdims=True)) + m
  return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def np_softmax(a, axis):
  e = np.exp(a - a.max(axis, keepdims=True)); return e / e.sum(axis, keepdims=True)


RED = {
  "sum": (lambda a, ax, kd: a.sum(ax, keepdims=kd), lambda t, ax, kd: t.sum(ax, keepdim=kd)),
  "mean": (lambda a, ax, kd: a.mean(ax, keepdims=kd), lambda t, ax, kd: t.mean(ax, keepdim=kd)),
  "max": (lambda a, ax, kd: a.max(ax, keepdims=kd), lambda t, ax, kd: t.amax(ax, keepdim=kd)),
  "min": (lambda a, ax, kd: a.min(ax, keepdims=kd), lambda t, ax, kd: t.amin(ax, keepdim=kd)),
  "var": (lambda a, ax, kd: a.var(ax, keepdims=kd, ddof=1), lambda t, ax, kd: t.var(ax, keepdim=kd)),
  "std": (lambda a, ax, kd: a.std(ax, keepdims=kd, ddof=1), lambda t, ax, kd: t.std(ax, keepdim=kd)),
  "logsumexp": (np_lse, lambda t, ax, kd: t.logsumexp(ax, keepdim=kd)),
}
AXES = [None, 0, -1, (0, 2), 1]


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", sorted(RED))
def test_reduce(name, axis):
  f_np, f_t = RED[name]
  x = rnd(3, 5, 7, seed=11)
  for kd in (False, True):
    check(lambda a: f_np(a, axis, kd), lambda t: f_t(t, axis, kd), x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(RED))
def test_reduce_lowp(name, dtype):
  f_np, f_t = RED[name]
  check(lambda a: f_np(a, -1, False), lambda t: f_t(t, -1, False), rnd(5, 13, seed=12), dtype=dtype)


@pytest.mark.parametrize("view", ["T", "s", "f", "e"])
def test_reduce_views(view):
  x = rnd(6, 5, seed=13)
  if view == "e": x = np.broadcast_to(x[:1], x.shape).copy()
  check(lambda a: a.sum(0) + a.max(1).sum(), lambda t: t.sum(0) + t.amax(1).sum(), x, views=[view])
  check(lambda a: np_softmax(a, 1), lambda t: t.softmax(1), x, views=[view])


def test_reduce_0d_and_size1():
  x = np.array(1.5)
  check(lambda a: a.sum(), lambda t: t.sum(), x)
  check(lambda a: a.max(), lambda t: t.max(), x)
  check(lambda a: a.mean(), lambda t: t.mean(), x)
  y = rnd(1, 7, 1, seed=14)
  for ax in (0, 2, (0, 2), None, 1):
    check(lambda a: a.sum(ax, keepdims=True), lambda t: t.sum(ax, keepdim=True), y)
    check(lambda a: a.max(ax), lambda t: t.amax(ax), y)
  check(lambda a: a.sum(0), lambda t: t.sum(0), rnd(13, seed=15))


def test_reduce_int_and_bool():
  a = np.random.default_rng(0).integers(-50, 50, size=(4, 9)).astype(np.int32)
  t = Tensor(a)
  assert t.sum().dtype == dtypes.int32
  np.testing.assert_array_equal(t.sum(1).numpy(), a.sum(1))
  np.testing.assert_array_equal(t.amax(0).numpy(), a.max(0))
  np.testing.assert_array_equal(t.amin(0).numpy(), a.min(0))
  np.testing.assert_array_equal(t.min(0).values.numpy(), a.min(0))
  np.testing.assert_allclose(t.mean(1).numpy(), a.mean(1), rtol=1e-6)
  b = a > 0
  np.testing.assert_array_equal(Tensor(b).sum(1).numpy(), b.sum(1))
  np.testing.assert_array_equal(Tensor(b).any(1).numpy(), b.any(1))
  np.testing.assert_array_equal(Tensor(b).all(0).numpy(), b.all(0))
  np.testing.assert_array_equal(Tensor(a.astype(np.int8)).sum(0).numpy(), a.sum(0))   # int8 sums widen
  # min/argmin of unsigned and at the edge of the signed range (no negation overflow)
  for v in (np.array([[7, 0, 200, 3], [255, 9, 1, 254]], np.uint8), np.array([[-128, 5, 127, -3], [0, 127, -127, 1]], np.int8),
            np.array([[4000000000, 3, 7, 0], [5, 4294967295, 6, 9]], np.uint32), np.array([[-2 ** 31, 2 ** 31 - 1, 0, 1], [3, 2, 1, 2]], np.int32)):
    tv = Tensor(v)
    np.testing.assert_array_equal(tv.amin(1).numpy(), v.min(1), err_msg=str(v.dtype))
    np.testing.assert_array_equal(tv.amax(0).numpy(), v.max(0), err_msg=str(v.dtype))
    np.testing.assert_array_equal(tv.argmin(1).numpy(), v.argmin(1), err_msg=str(v.dtype))
    np.testing.assert_array_equal(tv.argmax(1).numpy(), v.argmax(1), err_msg=str(v.dtype))
    np.testing.assert_array_equal(tv.minimum(tv.flip(1)).numpy(), np.minimum(v, v[:, ::-1]), err_msg=str(v.dtype))
  np.testing.assert_array_equal(Tensor(b).amin(1).numpy(), b.min(1))


@pytest.mark.parametrize("dtype", FLOATS)
def test_argmax_argmin(dtype):
  x = np.random.default_rng(2).standard_normal((4, 6, 5)).astype(np.float32)
  t = Tensor(x, dtype=dtype)
  xr = t.numpy()
  for ax in (0, 1, -1):
    np.testing.assert_array_equal(t.argmax(ax).numpy(), xr.argmax(ax))
    np.testing.assert_array_equal(t.argmin(ax).numpy(), xr.argmin(ax))
    np.testing.assert_array_equal(t.argmax(ax, keepdim=True).numpy(), np.expand_dims(xr.argmax(ax), ax))
  assert t.argmax().item() == xr.argmax()
  ties = Tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
  np.testing.assert_array_equal(ties.argmax(1).numpy(), [1, 0])   # first maximum, as numpy
  np.testing.assert_array_equal(ties.argmin(1).numpy(), [3, 0])
  np.testing.assert_array_equal(Tensor(x[0]).T.argmax(0).numpy(), x[0].T.argmax(0))


def test_amax_gradient_ties_split():
  t = Tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]], requires_grad=True)
  t.amax(1).sum().backward()
  np.testing.assert_allclose(t.grad.numpy(), [[0, 0.5, 0.5], [1, 0, 0]])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_log_softmax(axis):
  x = rnd(4, 7, 5, seed=16, lo=-3, hi=3)
  check(lambda a: np_softmax(a, axis), lambda t: t.softmax(axis), x)
  check(lambda a: a - np_lse(a, axis, True), lambda t: t.log_softmax(axis), x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softmax_lowp(dtype):
  x = rnd(3, 13, seed=17, lo=-3, hi=3)
  check(lambda a: np_softmax(a, -1), lambda t: t.softmax(-1), x, dtype=dtype)
  check(lambda a: a - np_lse(a, -1, True), lambda t: t.log_softmax(-1), x, dtype=dtype)


def test_softmax_stability():
  x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
  np.testing.assert_allclose(Tensor(x).softmax(-1).numpy(), np_softmax(x, -1), rtol=1e-5)
  np.testing.assert_allclose(Tensor(x).log_softmax(-1).numpy(), x - np_lse(x, -1, True), rtol=1e-5)
  np.testing.assert_allclose(Tensor(x).logsumexp(-1).numpy(), np_lse(x, -1), rtol=1e-6)


def test_large_reduction():
  x = rnd(3, 5000, seed=18)
  check(lambda a: a.sum(1), lambda t: t.sum(1), x, grad=False)
  check(lambda a: a.sum(), lambda t: t.sum(), x, grad=False, tol=dict(rtol=1e-4, atol=1e-3))
  check(lambda a: a.max(0), lambda t: t.amax(0), x, grad=False)


def test_reduce_errors():
  t = Tensor(np.ones((2, 3), np.float32))
  with pytest.raises(IndexError, match="dimension 2 out of range"): t.sum(2)


@pytest.mark.parametrize("shape,axis", [((8192, 300), 0), ((3, 4096, 100), 1), ((1 << 20,), None), ((4, 1024, 256), (0, 1))])
def test_large_reductions_into_few_outputs_split_in_two(shape, axis):
  """A big reduction into few outputs runs as partial reductions then a final one (two or three kernels)."""
  from trainer.core.schedule import create_schedule
  x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
  t = Tensor(x)
  for name, ref in (("sum", x.astype(np.float64).sum(axis=axis)), ("amax", x.max(axis=axis))):
    out = getattr(t, name)(axis=axis)
    assert 2 <= len(create_schedule([out.lazydata])) <= 3
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5 * np.sqrt(x.size))
