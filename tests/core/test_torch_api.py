"""Where a Tensor name is also a torch name it means what torch's does: each case against a float64 numpy
reference (or torch's documented result), with gradients where the op has them."""
import math
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, where
from opcheck import check, rnd, to_np


# ---- boolean masks select (they are not the indices 0 and 1) ----
@pytest.mark.parametrize("view", ["c", "T", "s"])
def test_bool_mask_selects_rows(view):
  x = rnd(6, 5, seed=1)
  r = np.random.default_rng(2)
  rows, full = r.random(6) > 0.5, r.random((6, 5)) > 0.5
  check(lambda a: a[rows], lambda t: t[Tensor(rows)], x, views=[view])
  check(lambda a: a[full], lambda t: t[Tensor(full)], x, views=[view])
  check(lambda a: a[:, full[0]], lambda t: t[:, list(full[0])], x, views=[view])         # a list of bools is a mask too
  check(lambda a: a[1:, None][rows[1:]], lambda t: t[1:, None][rows[1:]], x, views=[view])  # a numpy mask after a slice


def test_bool_mask_from_a_lazy_comparison_and_edge_cases():
  x = rnd(3, 4, 5, seed=3)
  t = Tensor(x)
  np.testing.assert_array_equal(t[t > 0.5].numpy(), x.astype(np.float32)[x.astype(np.float32) > 0.5])
  np.testing.assert_array_equal(t[..., (t[0, 0] > 0).numpy()].numpy(), x.astype(np.float32)[..., x[0, 0] > 0])
  assert t[Tensor(np.zeros(3, bool))].shape == (0, 4, 5)
  assert t[True].shape == (1, 3, 4, 5) and t[False].shape == (0, 3, 4, 5)     # a bool scalar is a new axis, not index 1/0
  i = Tensor(np.array([2, -1, 0], np.int32))
  np.testing.assert_array_equal(t[:, i].numpy(), x.astype(np.float32)[:, [2, -1, 0]])
  ints = Tensor(np.arange(24, dtype=np.int32).reshape(4, 6))
  np.testing.assert_array_equal(ints[ints % 3 == 0].numpy(), np.arange(0, 24, 3))
  with pytest.raises(IndexError, match="mask of shape"): t[Tensor(np.ones(4, bool))]
  with pytest.raises(IndexError, match="out of bounds"): t[3]


# ---- arithmetic ----
def test_floor_division_and_remainder_follow_python():
  a = rnd(5, 6, seed=4, lo=-9, hi=9)
  b = rnd(6, seed=5, lo=-3, hi=3, away=0.3)
  for view in ("c", "T"):
    check(np.floor_divide, lambda x, y: x // y, a, b[:5, None] if view == "T" else b, views=[view, "c"], grad=False)
    check(np.remainder, lambda x, y: x % y, a, b, views=[view, "c"], grad=False)
  check(np.fmod, lambda x, y: x.fmod(y), a, b, grad=False)
  check(lambda x, y: np.trunc(x / y), lambda x, y: x.div(y, rounding_mode="trunc"), a, b, grad=False)
  check(lambda x: np.floor_divide(x, 2.5), lambda x: x.div(2.5, rounding_mode="floor"), a, grad=False)
  check(lambda x: np.remainder(7.0, x), lambda x: 7.0 % x, b, grad=False)
  check(lambda x: np.remainder(x, 1.5), lambda x: x % 1.5, a, grad=False)
  check(lambda x: np.floor(x) + np.ceil(x) + np.trunc(x), lambda x: x.floor() + x.ceil() + x.trunc(), a, grad=False)
  ai = np.random.default_rng(6).integers(-50, 50, (4, 7)).astype(np.int32)
  bi = np.random.default_rng(7).integers(1, 9, (7,)).astype(np.int32) * np.array([1, -1, 1, -1, 1, -1, 1], np.int32)
  for x, y in ((ai, bi), (ai, 4), (-7, bi)):
    tx, ty = (Tensor(v) if isinstance(v, np.ndarray) else v for v in (x, y))
    np.testing.assert_array_equal((tx // ty).numpy(), np.floor_divide(x, y))
    np.testing.assert_array_equal((tx % ty).numpy(), np.remainder(x, y))
  assert (Tensor([-7]) // 2).item() == -4 and (Tensor([-7]) % 2).item() == 1 and (Tensor([1.0]) // 0.1).item() == 9.0


def test_pow_of_negative_base():
  r = np.random.default_rng(8)
  a = np.concatenate([rnd(30, seed=9, lo=-3, hi=3, away=0.1), [-8.0, -2.0, 0.0, 0.0, 1.0, -1.0]])
  b = np.concatenate([np.where(r.random(30) > 0.5, r.integers(-3, 4, 30), r.uniform(-2.5, 2.5, 30)), [1 / 3, 3.0, 0.0, 2.5, np.nan, 0.5]])
  with np.errstate(invalid="ignore", divide="ignore"):
    want = np.power(a, b)
  got = (Tensor(a) ** Tensor(b)).numpy()
  assert np.array_equal(np.isnan(got), np.isnan(want)), (a[np.isnan(got) != np.isnan(want)], b[np.isnan(got) != np.isnan(want)])
  np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=2e-5)
  assert math.isnan((Tensor(-8.0) ** (1 / 3)).item()) and (Tensor(0.0) ** 0).item() == 1 and (Tensor(math.nan) ** 0.0).item() == 1
  check(lambda x, y: x ** y, lambda x, y: x ** y, rnd(4, 5, seed=10, lo=0.3, hi=3), rnd(5, seed=11, lo=-2, hi=2))


def test_where_method_and_function():
  c = np.random.default_rng(12).random((4, 5)) > 0.5
  x, y = rnd(4, 5, seed=13), rnd(5, seed=14)
  check(lambda a, b: np.where(c, a, b), lambda a, b: a.where(Tensor(c), b), x, y)        # x.where(cond, y) is where(cond, x, y)
  check(lambda a, b: np.where(c, a, b), lambda a, b: where(Tensor(c), a, b), x, y)


# ---- gradients at the edges, as torch's ----
def test_clamp_values_and_abs_has_no_gradient_at_zero():
  """(clamp's gradient at its bounds: test_torch_edges.py)"""
  x = Tensor([-1.0, 0.0, 2.0], requires_grad=True)
  x.abs().sum().backward()
  np.testing.assert_array_equal(x.grad.numpy(), [-1, 0, 1])
  assert math.copysign(1, Tensor([-0.0]).abs().item()) == 1
  lo, hi = rnd(6, seed=15, lo=-1, hi=0), rnd(6, seed=16, lo=0.2, hi=1)
  check(lambda a, l, h: np.clip(a, l, h), lambda a, l, h: a.clamp(l, h), rnd(3, 6, seed=17), lo, hi)
  np.testing.assert_array_equal(Tensor([0.0, 5.0]).clamp(min=3, max=1).numpy(), [1, 1])        # max wins, as torch
  with pytest.raises(RuntimeError, match="at least one"): Tensor([1.0]).clamp()


def test_erf_and_exact_gelu_against_math_erf():
  x = np.concatenate([np.linspace(-5, 5, 1001), [0.49999, 0.5, 0.50001, 1e-5, -1e-5, -30.0, 30.0]])
  x32 = x.astype(np.float32).astype(np.float64)
  erf = np.vectorize(math.erf)(x32)
  np.testing.assert_allclose(to_np(Tensor(x).erf()), erf, rtol=3e-7, atol=1e-30)
  np.testing.assert_allclose(to_np(Tensor(x).gelu()), 0.5 * x32 * (1 + np.vectorize(math.erf)(x32 / math.sqrt(2))), rtol=1e-6, atol=1e-7)
  assert np.isnan(Tensor([math.nan]).erf().item()) and Tensor([math.inf]).erf().item() == 1.0
  with pytest.raises(RuntimeError, match="approximate"): Tensor([1.0]).gelu(approximate="fast")


# ---- reductions take dim= (and axis=), max/min with a dim give (values, indices) ----
def test_dim_keyword_and_axis_alias():
  x = rnd(3, 4, 5, seed=18)
  check(lambda a: a.sum((0, 2)), lambda t: t.sum(dim=(0, 2)), x)
  check(lambda a: a.mean(1, keepdims=True), lambda t: t.mean(axis=1, keepdim=True), x)
  check(lambda a: a.var(1, ddof=0), lambda t: t.var(1, False), x)                  # torch's positional unbiased
  check(lambda a: a.std(2, ddof=0, keepdims=True), lambda t: t.std(dim=2, keepdim=True, correction=0), x)
  check(lambda a: a.max((0, 1)), lambda t: t.amax(dim=(0, 1)), x)
  check(lambda a: a.min(-1), lambda t: t.amin(dim=-1), x)
  check(lambda a: np.log(np.exp(a).sum(1)), lambda t: t.logsumexp(dim=1), x)
  check(lambda a: np.exp(a) / np.exp(a).sum(0), lambda t: t.softmax(dim=0), x)
  check(lambda a: a - np.log(np.exp(a).sum(1, keepdims=True)), lambda t: t.log_softmax(axis=1), x)
  assert np.isnan(Tensor([1.5]).var().item()) and Tensor([1.5, 2.5]).var(correction=0).item() == 0.25
  with pytest.raises(TypeError, match="not both"): Tensor(x).sum(dim=0, axis=1)
  with pytest.raises(IndexError, match="out of range"): Tensor(x).sum(dim=3)


def test_max_and_min_with_a_dim_return_values_and_indices():
  x = rnd(4, 6, seed=19)
  t = Tensor(x, requires_grad=True)
  values, indices = t.max(1)
  np.testing.assert_allclose(values.numpy(), x.max(1), rtol=1e-6)
  np.testing.assert_array_equal(indices.numpy(), x.argmax(1))
  low = t.min(dim=0, keepdim=True)
  np.testing.assert_array_equal(low.indices.numpy(), x.argmin(0)[None])
  np.testing.assert_allclose(low.values.numpy(), x.min(0, keepdims=True), rtol=1e-6)
  values.sum().backward()
  np.testing.assert_array_equal(t.grad.numpy(), np.eye(6)[x.argmax(1)])
  np.testing.assert_allclose(t.max().numpy(), x.max(), rtol=1e-6)                       # no dim: the value
  np.testing.assert_allclose(t.max(Tensor(x[::-1].copy())).numpy(), np.maximum(x, x[::-1]), rtol=1e-6)   # a tensor: elementwise
  with pytest.raises(TypeError): t.max((0, 1))


# ---- movement and creation ----
def test_views_repeat_and_friends():
  x = rnd(2, 3, 4, seed=20)
  check(lambda a: np.tile(a, (2, 1, 3)), lambda t: t.repeat(2, 1, 3), x)
  check(lambda a: np.tile(a, (2, 1, 1, 1)), lambda t: t.repeat((2, 1, 1, 1)), x, views=["T"])
  check(lambda a: a.transpose(2, 1, 0), lambda t: t.T, x)
  check(lambda a: np.swapaxes(a, -1, -2), lambda t: t.mT, x)
  check(lambda a: np.moveaxis(a, 0, -1), lambda t: t.movedim(0, -1), x)
  check(lambda a: a[:1, :, :1].reshape(3), lambda t: t[:1, :, :1].squeeze((0, 2)), x)
  check(lambda a: a[::-1, :, ::-1], lambda t: t.flip(0, 2), x)
  check(lambda a: a.T.reshape(4, 6), lambda t: t.T.view(4, 6), x)                  # a view of a non-contiguous tensor works
  check(lambda a: np.broadcast_to(a[:, :1], (2, 3, 4)), lambda t: t[:, :1].expand_as(t), x)
  check(lambda a: a.reshape(6, 4), lambda t: t.view_as(Tensor.zeros(6, 4)), x)
  check(lambda a: np.where(a > 0.5, -1.0, a), lambda t: t.masked_fill(t.detach() > 0.5, -1.0), x)
  with pytest.raises(RuntimeError, match="repeat"): Tensor(x).repeat(2, 2)
  with pytest.raises(RuntimeError, match="bool"): Tensor(x).masked_fill(Tensor(x), 0.0)
  with pytest.raises(NotImplementedError, match="cast"): Tensor(x).view(dtypes.int32)


def test_to_new_and_creation():
  t = Tensor(rnd(2, 3, seed=21))
  assert t.to(dtypes.float16).dtype == dtypes.float16 and t.to("bfloat16").dtype == dtypes.bfloat16
  assert t.to("cpu:1").device == "CPU:1" and t.to("cpu:1", dtypes.float16).dtype == dtypes.float16
  other = Tensor(np.zeros(1, np.int32), device="CPU:2")
  moved = t.to(other)
  assert (moved.device, moved.dtype) == ("CPU:2", dtypes.int32)
  assert t.to(device="CPU:1", dtype=np.float16).dtype == dtypes.float16 and t.to(t.dtype, copy=True) is not t
  z = Tensor(np.ones(2, np.int32), device="CPU:1").new_zeros(2, 3)
  assert (z.shape, z.dtype, z.device) == ((2, 3), dtypes.int32, "CPU:1") and z.numpy().sum() == 0
  assert t.new_full((4,), 2.5).numpy().tolist() == [2.5] * 4 and t.new_ones(3).dtype == dtypes.float32
  r = Tensor.randint(3, 7, (500,)).numpy()
  assert r.min() == 3 and r.max() == 6 and Tensor.randint(5, size=(2, 2)).shape == (2, 2)
  assert Tensor.arange(2, end=8, step=3).numpy().tolist() == [2, 5]
  np.testing.assert_allclose(Tensor([1.0, 2.0]).dot(Tensor([3.0, 4.0])).item(), 11.0)
  with pytest.raises(RuntimeError, match="1-d"): Tensor.ones(2, 2).dot(Tensor.ones(2))
  assert t.requires_grad_().requires_grad and t.dim() == 2


def test_errors_are_runtime_errors_where_torch_raises_them():
  a, b = Tensor.ones(3, 4), Tensor.ones(5)
  for bad in (lambda: a + b, lambda: a @ b, lambda: a.reshape(5), lambda: a.expand(2, 4), lambda: Tensor.cat([a, b]), lambda: a.item()):
    with pytest.raises(RuntimeError): bad()
    with pytest.raises(ValueError): bad()     # and still ValueErrors, which the launcher reports in one line


def test_conv2d_same_and_valid_padding():
  from test_functional import np_conv2d
  x, w = rnd(1, 2, 6, 7, seed=22), rnd(3, 2, 3, 3, seed=23)
  check(lambda x, w: np_conv2d(x, w, padding=1), lambda x, w: x.conv2d(w, padding="same"), x, w)
  check(lambda x, w: np_conv2d(x, w), lambda x, w: x.conv2d(w, padding="valid"), x, w, grad=False)
