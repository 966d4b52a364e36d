"""Values and gradients where torch 2.14 defines them by a rule rather than by calculus: the remainders' gradients,
powers at a zero base, logsumexp over infinities, clamp at its bounds. Each against a float64 reference written
from torch's documented formulas (tools/autograd/derivatives.yaml and FunctionsManual.cpp), not against torch."""
import math
import numpy as np
import pytest
from trainer.core import Tensor
from opcheck import rnd


def _grads(fn, *xs, upstream_seed=5):
  """fn on float32 Tensors of xs (each requiring a gradient) and the gradients of sum(out * g) for a random g."""
  ts = [Tensor(np.asarray(x, np.float32), requires_grad=True) for x in xs]
  out = fn(*ts)
  g = np.random.default_rng(upstream_seed).uniform(0.5, 2.0, out.shape).astype(np.float32)
  (out * Tensor(g)).sum().backward()
  return out.numpy().astype(np.float64), g.astype(np.float64), [None if t.grad is None else t.grad.numpy().astype(np.float64) for t in ts]


def _unbroadcast(g, shape):
  while g.ndim > len(shape): g = g.sum(0)
  return g.sum(tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)


# ---- % and fmod: derivatives.yaml gives remainder (1, -floor(a / b)) and fmod (1, -trunc(a / b)) ----
def _away_from_integer_quotients(a, b):
  """a nudged so that a / b is at least 0.05 from an integer (float32 rounding cannot move the quotient's floor)."""
  q = a / b
  return np.where(np.abs(q - np.round(q)) < 0.05, a + 0.1 * b, a)


@pytest.mark.parametrize("op", ["remainder", "%", "fmod"])
def test_remainder_and_fmod_gradients_are_torch_s(op):
  b = rnd(1, 7, seed=2, lo=-3, hi=3, away=0.4)                    # broadcast over rows
  a = _away_from_integer_quotients(rnd(5, 7, seed=1, lo=-9, hi=9), b)
  a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
  rounding = np.trunc if op == "fmod" else np.floor
  fn = {"remainder": lambda x, y: x.remainder(y), "%": lambda x, y: x % y, "fmod": lambda x, y: x.fmod(y)}[op]
  out, g, (ga, gb) = _grads(fn, a32, b32)
  q = rounding(a32 / b32)
  np.testing.assert_allclose(out, a32 - b32 * q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ga, g, rtol=1e-6)                                    # d/da = 1
  np.testing.assert_allclose(gb, _unbroadcast(-g * q, b32.shape), rtol=1e-5)    # d/db = -round(a / b)
  assert np.any(q != 0) and np.any(np.sign(a32) != np.sign(b32))                  # the cases that leaked before


def test_remainder_with_a_scalar_on_either_side_and_a_non_contiguous_divisor():
  b = rnd(6, 4, seed=3, lo=0.5, hi=3.0) * np.where(np.arange(4) % 2, -1, 1)
  b32 = b.astype(np.float32).astype(np.float64)
  b32 = np.where(np.abs(7.0 / b32 - np.round(7.0 / b32)) < 0.05, b32 * 1.1, b32).astype(np.float32).astype(np.float64)
  out, g, (gb,) = _grads(lambda y: 7.0 % y.T, b32.T.copy())             # Python's 7.0 % b, b a transposed view
  q = np.floor(7.0 / b32)
  np.testing.assert_allclose(out, 7.0 - b32 * q, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gb, (-g * q).T, rtol=1e-5)
  a = rnd(3, 5, seed=4, lo=-9, hi=9)
  out, g, (ga,) = _grads(lambda x: x % 2.5, a)
  np.testing.assert_allclose(ga, g, rtol=1e-6)


def test_floor_division_carries_no_gradient():
  a, b = rnd(4, 5, seed=5, lo=-9, hi=9), rnd(5, seed=6, lo=-3, hi=3, away=0.4)
  ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
  out = (ta // tb) + ta.div(tb, rounding_mode="trunc") + ta * 0
  out.sum().backward()
  np.testing.assert_array_equal(ta.grad.numpy(), np.zeros((4, 5)))
  assert tb.grad is None or not np.any(tb.grad.numpy())


# ---- **: pow_backward_self / pow_backward_exponent (FunctionsManual.cpp) ----
def _pow_reference(a, b, g):
  """torch's gradients of a ** b: self: where(b == 0, 0, g * b * a ** (b - 1)); exponent: g * where(a == 0 and b >= 0,
  0, a ** b * log(a))."""
  with np.errstate(all="ignore"):
    ga = np.where(b == 0, 0.0, g * b * np.power(a, b - 1))
    gb = g * np.where((a == 0) & (b >= 0), 0.0, np.power(a, b) * np.log(a))
  return ga, gb


def test_pow_gradients_at_a_zero_base():
  a = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 2.0, 0.5, -2.0, -1.5])
  b = np.array([2.0, 0.0, 1.0, 3.0, 0.5, 2.0, -1.5, 0.0, 3.0, 2.0])
  out, g, (ga, gb) = _grads(lambda x, y: x ** y, a, b)
  want_a, want_b = _pow_reference(a, b, g)
  with np.errstate(all="ignore"): np.testing.assert_allclose(out, np.power(a, b), rtol=1e-6)
  np.testing.assert_allclose(ga, want_a, rtol=1e-5)          # 0, 0, g, 0, inf at the zero base
  np.testing.assert_allclose(gb[:8], want_b[:8], rtol=1e-5)  # 0 at the zero base with b >= 0
  assert np.all(np.isnan(gb[8:]))                            # log of a negative base, as torch
  assert not np.any(np.isnan(ga))


@pytest.mark.parametrize("exponent", [0, 0.0, 2.5, 1.5, 4, -1, 0.5, 2, 1, 3])
def test_pow_with_a_scalar_exponent_at_zero(exponent):
  """pow_backward: zeros for exponent 0, else g * e * x ** (e - 1): 0 ** positive powers give 0, 0 ** 0 gives 1."""
  x = np.array([0.0, 0.75, -1.25, 2.0, 0.0])
  out, g, (gx,) = _grads(lambda t: t ** exponent, x)
  with np.errstate(all="ignore"):
    want = np.zeros_like(x) if exponent == 0 else g * exponent * np.power(x, exponent - 1.0)
  if not float(exponent).is_integer(): want[2] = math.nan                   # a negative base to a fractional power
  np.testing.assert_allclose(gx, want, rtol=1e-5)


def test_a_scalar_base_to_a_tensor_exponent():
  y = np.array([0.0, 1.0, -0.5, 2.5, 3.0])
  out, g, (gy,) = _grads(lambda t: 2.0 ** t, y)
  np.testing.assert_allclose(gy, g * np.power(2.0, y) * math.log(2.0), rtol=1e-6)
  out, g, (gy,) = _grads(lambda t: 0.0 ** t, y)
  np.testing.assert_allclose(out, [1, 0, math.inf, 0, 0])
  np.testing.assert_array_equal(gy[[0, 1, 3, 4]], 0)                       # base 0, exponent >= 0
  r = np.random.default_rng(9)
  a, b = r.uniform(0.2, 3, (4, 6)), r.uniform(-2, 2, (6,))
  out, g, (ga, gb) = _grads(lambda x, y: x ** y, a, b[None])
  want_a, want_b = _pow_reference(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)[None], g)
  np.testing.assert_allclose(ga, want_a, rtol=2e-5)
  np.testing.assert_allclose(gb, want_b.sum(0, keepdims=True), rtol=2e-5)


# ---- logsumexp: torch masks an infinite maximum to 0 before subtracting it ----
def test_logsumexp_with_infinite_entries():
  x = np.array([[-math.inf, -math.inf, -math.inf], [1.0, math.inf, -2.0], [-math.inf, 0.5, -1.0], [math.inf, math.inf, 2.0]])
  got = Tensor(x).logsumexp(1).numpy()
  with np.errstate(divide="ignore"):
    want = np.log(np.exp(x).sum(1))
  np.testing.assert_array_equal(got[[0, 1, 3]], [-math.inf, math.inf, math.inf])
  np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
  assert Tensor(x).logsumexp(1, keepdim=True).shape == (4, 1)
  t = Tensor(x[2:3], requires_grad=True)   # a finite row beside -inf: the gradient is the softmax (0 at -inf)
  t.logsumexp(1).sum().backward()
  with np.errstate(divide="ignore"):
    np.testing.assert_allclose(t.grad.numpy()[0], np.exp(x[2] - want[2]), rtol=1e-6)


# ---- clamp: scalar bounds are strict (torch 2.14: clamp_min self: where(self > min, grad, 0)) ----
def test_clamp_with_scalar_bounds_gives_no_gradient_at_the_bounds():
  x = Tensor([-1.0, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
  x.clamp(0, 1).sum().backward()
  np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 1, 0, 0])
  for fn, want in ((lambda t: t.clamp(min=0.0), [0, 0, 1, 1, 1]), (lambda t: t.clamp(max=1.0), [1, 1, 1, 0, 0]),
                   (lambda t: t.clip(0.5, 0.5), [0, 0, 0, 0, 0])):
    x = Tensor([-1.0, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    fn(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), want)


def test_clamp_with_tensor_bounds_keeps_the_closed_interval():
  """clamp.Tensor is unchanged in torch: self gets the gradient where min <= x <= max, min where x < min (and
  min < max), max where x > max or max < min."""
  x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 0.7])
  lo = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.9])
  hi = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.2])     # the last: min > max, the result is max
  out, g, (gx, glo, ghi) = _grads(lambda t, l, h: t.clamp(l, h), x, lo, hi)
  np.testing.assert_array_equal(out, np.minimum(np.maximum(x, lo), hi).astype(np.float32))
  np.testing.assert_array_equal(gx, g * ((x >= lo) & (x <= hi)))
  np.testing.assert_array_equal(glo, g * ((x < lo) & (lo < hi)))
  np.testing.assert_array_equal(ghi, g * ((x > hi) | (hi < lo)))


# ---- ties: torch.max(x, dim) and max_pool2d send the gradient to the one index they return, not to every maximum ----
# (derivatives.yaml: max.dim's values go through value_selecting_reduction_backward with the indices; max_pool2d's
# backward, aten/src/ATen/native/cpu/MaxPoolKernel.cpp, adds each output's gradient at the index its forward kept:
# the first maximum of the window in row-major order, `if (val > maxval)`.)  amax and max() without a dim share a
# tie evenly, and keep doing so.
def _ties(*shape, seed):
  """Random small integers as float32: windows and rows with several equal maxima."""
  return np.random.default_rng(seed).integers(-2, 3, shape).astype(np.float64)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_along_a_dim_sends_the_gradient_to_the_returned_index(dim):
  x = _ties(4, 5, 6, seed=dim + 3)
  out, g, (gx,) = _grads(lambda t: t.max(dim).values, x)
  first = np.argmax(x, axis=dim)                      # numpy's argmax is the first maximum, as torch's index
  want = np.zeros_like(x)
  np.put_along_axis(want, np.expand_dims(first, dim), np.expand_dims(g, dim), axis=dim)
  np.testing.assert_array_equal(out, x.max(dim))
  np.testing.assert_array_equal(gx, want)


def test_min_along_a_dim_and_amax_ties():
  x = _ties(6, 7, seed=9)
  _, g, (gx,) = _grads(lambda t: t.min(1).values, x)
  want = np.zeros_like(x)
  want[np.arange(6), np.argmin(x, 1)] = g
  np.testing.assert_array_equal(gx, want)
  _, g, (gx,) = _grads(lambda t: t.amax(1), x)       # amax: evenly among the maxima (scale_grad_by_count)
  tie = x == x.max(1, keepdims=True)
  np.testing.assert_allclose(gx, tie * (g / tie.sum(1))[:, None], rtol=1e-6)


def _np_max_pool2d_grad(x, g, k, s, p, d):
  """torch's CPU max_pool2d backward: each output's gradient at the first maximum of its window (row-major), padding
  never chosen."""
  N, C, H, W = x.shape
  gx = np.zeros_like(x)
  for n in range(N):
    for c in range(C):
      for oy in range(g.shape[2]):
        for ox in range(g.shape[3]):
          best, at = -np.inf, None
          for i in range(k[0]):
            for j in range(k[1]):
              y, xx = oy * s[0] - p[0] + i * d[0], ox * s[1] - p[1] + j * d[1]
              if 0 <= y < H and 0 <= xx < W and (at is None or x[n, c, y, xx] > best): best, at = x[n, c, y, xx], (y, xx)
          gx[n, c, at[0], at[1]] += g[n, c, oy, ox]
  return gx


@pytest.mark.parametrize("k,s,p,d", [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)),
                                     ((3, 2), (1, 2), (1, 0), (2, 1)), ((3, 3), (1, 1), (0, 0), (1, 1))])
def test_max_pool2d_sends_the_gradient_to_the_first_maximum_of_each_window(k, s, p, d):
  x = _ties(2, 3, 9, 8, seed=11)
  out, g, (gx,) = _grads(lambda t: t.max_pool2d(k, s, p, d), x)
  np.testing.assert_allclose(gx, _np_max_pool2d_grad(x, g, k, s, p, d), rtol=1e-6)   # overlapping windows: float32 sums


# ---- NaN: torch's maximum, minimum, max, min, amax, amin, argmax, relu and max_pool2d return a NaN they meet
# (torch.maximum's documentation: "If one of the elements being compared is a NaN, then that element is returned";
# the reductions and argmax treat NaN as the largest value, as numpy's do). Reductions long enough to take the
# vectorised loop (5,000 per row) and the whole-tensor one split over threads (120,000) are included.
def _with_nans(*shape, seed, every=37):
  x = np.random.default_rng(seed).standard_normal(shape)
  flat = x.reshape(-1)
  flat[np.random.default_rng(seed + 1).choice(flat.size, max(1, flat.size // every), replace=False)] = np.nan
  return x.astype(np.float32)


def test_maximum_and_minimum_return_the_nan():
  a, b = _with_nans(6, 7, seed=1), _with_nans(7, seed=3, every=3)
  np.testing.assert_array_equal(Tensor(a).maximum(Tensor(b)).numpy(), np.maximum(a, b))
  np.testing.assert_array_equal(Tensor(b).maximum(Tensor(a)).numpy(), np.maximum(b, a))
  np.testing.assert_array_equal(Tensor(a).minimum(Tensor(b)).numpy(), np.minimum(a, b))


@pytest.mark.parametrize("shape,dim", [((4, 9), 1), ((4, 9), 0), ((3, 5000), 1), ((5000, 3), 0), ((120000,), None), ((2, 3, 4), (0, 2))])
def test_max_reductions_propagate_nan(shape, dim):
  x = _with_nans(*shape, seed=sum(shape), every=max(7, int(np.prod(shape)) // 5))
  x[0] = np.random.default_rng(0).standard_normal(x[0].shape)           # one slice without NaN: its max is a number
  np.testing.assert_array_equal(Tensor(x).amax(dim).numpy(), np.max(x, axis=dim))
  np.testing.assert_array_equal(Tensor(x).amin(dim).numpy(), np.min(x, axis=dim))
  if isinstance(dim, int):
    v, i = Tensor(x).max(dim)
    np.testing.assert_array_equal(v.numpy(), np.max(x, axis=dim))
    np.testing.assert_array_equal(i.numpy(), np.argmax(x, axis=dim))
    np.testing.assert_array_equal(Tensor(x).argmin(dim).numpy(), np.argmin(x, axis=dim))


def test_relu_and_max_pool2d_propagate_nan():
  x = _with_nans(2, 3, 8, 8, seed=5, every=29)
  np.testing.assert_array_equal(Tensor(x).relu().numpy(), np.where(np.isnan(x) | (x > 0), x, 0))
  got = Tensor(x).max_pool2d(3, 2, 1).numpy()
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  want = np.stack([xp[:, :, i:i + 7:2, j:j + 7:2] for i in range(3) for j in range(3)]).max(0)
  np.testing.assert_array_equal(got, want)


def test_relu_passes_no_gradient_at_a_nan_and_max_pool2d_sends_it_to_the_last_nan():
  """torch's relu backward is threshold_backward(grad, result, 0): none where the result is not > 0, a NaN
  included; max_pool2d's CPU kernel keeps an index where `val > maxval || isnan(val)`: the last NaN of a window."""
  x = np.array([[[[1.0, np.nan, 2.0, 0.5], [np.nan, 3.0, -1.0, 0.0]]]], np.float32)
  _, g, (gx,) = _grads(lambda t: t.relu(), x)
  np.testing.assert_array_equal(gx, np.where(x > 0, g, 0))
  _, g, (gx,) = _grads(lambda t: t.max_pool2d(2, 2), x)
  np.testing.assert_array_equal(gx, [[[[0, 0, g[0, 0, 0, 1], 0], [g[0, 0, 0, 0], 0, 0, 0]]]])   # windows [[1, nan], [nan, 3]], [[2, .5], [-1, 0]]


def test_maximum_gradient_follows_derivatives_yaml():
  """derivatives.yaml, maximum: self gets where(self == other, grad / 2, grad).masked_fill_(self < other, 0), other
  the same with self > other: a tie halves it, and a NaN on either side passes the whole gradient to both."""
  a = np.array([1.0, 2.0, 3.0, np.nan, 1.0, np.nan, -0.0], np.float32)
  b = np.array([2.0, 2.0, 1.0, 1.0, np.nan, np.nan, 0.0], np.float32)
  for fn, x, y in ((lambda s, t: s.maximum(t), a, b), (lambda s, t: s.minimum(t), -a, -b)):
    _, g, (ga, gb) = _grads(fn, x, y)
    want_a = np.where(a == b, g / 2, np.where(a < b, 0, g))
    want_b = np.where(a == b, g / 2, np.where(a > b, 0, g))
    np.testing.assert_array_equal(ga, want_a)
    np.testing.assert_array_equal(gb, want_b)
