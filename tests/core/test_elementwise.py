"""Elementwise ops and their gradients against float64 numpy, on every float dtype and on
non-contiguous views (transposed, strided-sliced, flipped, negative-step, expanded inputs)."""
import math
import zlib
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, where
from opcheck import check, rnd, FLOATS, to_np

sig = lambda x: 1 / (1 + np.exp(-x))
np_erf = np.vectorize(math.erf)
UNARY = {  # name: (numpy reference, tensor fn, input generator kwargs)
  "neg": (lambda x: -x, lambda t: -t, {}),
  "exp": (np.exp, Tensor.exp, {}),
  "exp2": (np.exp2, Tensor.exp2, {}),
  "log": (np.log, Tensor.log, dict(lo=0.1, hi=4)),
  "log2": (np.log2, Tensor.log2, dict(lo=0.1, hi=4)),
  "sqrt": (np.sqrt, Tensor.sqrt, dict(lo=0.1, hi=4)),
  "rsqrt": (lambda x: 1 / np.sqrt(x), Tensor.rsqrt, dict(lo=0.1, hi=4)),
  "reciprocal": (lambda x: 1 / x, Tensor.reciprocal, dict(away=0.3)),
  "sin": (np.sin, Tensor.sin, dict(lo=-7, hi=7)),
  "cos": (np.cos, Tensor.cos, dict(lo=-7, hi=7)),
  "tanh": (np.tanh, Tensor.tanh, dict(lo=-3, hi=3)),
  "sigmoid": (sig, Tensor.sigmoid, dict(lo=-5, hi=5)),
  "relu": (lambda x: np.maximum(x, 0), Tensor.relu, dict(away=0.05)),
  "leaky_relu": (lambda x: np.where(x > 0, x, 0.01 * x), Tensor.leaky_relu, dict(away=0.05)),
  "gelu": (lambda x: 0.5 * x * (1 + np_erf(x / math.sqrt(2))), Tensor.gelu, dict(lo=-4, hi=4)),
  "gelu_tanh": (lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), lambda t: t.gelu(approximate="tanh"), dict(lo=-4, hi=4)),
  "erf": (np_erf, Tensor.erf, dict(lo=-3, hi=3)),
  "silu": (lambda x: x * sig(x), Tensor.silu, dict(lo=-5, hi=5)),
  "abs": (np.abs, Tensor.abs, dict(away=0.05)),
  "square": (np.square, Tensor.square, {}),
  "clip": (lambda x: np.clip(x, -0.5, 0.7), lambda t: t.clip(-0.5, 0.7), dict(away=0.05)),
  "pow2.5": (lambda x: x ** 2.5, lambda t: t ** 2.5, dict(lo=0.2, hi=3)),
}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name, dtype):
  f_np, f_t, kw = UNARY[name]
  x = rnd(7, 13, seed=zlib.crc32(name.encode()) % 1000, **kw)
  if name == "clip": x = np.where(np.abs(x + 0.5) < 0.05, x + 0.1, np.where(np.abs(x - 0.7) < 0.05, x + 0.1, x))
  check(f_np, f_t, x, dtype=dtype)


@pytest.mark.parametrize("view", ["T", "s", "f", "n", "e"])
def test_unary_views(view):
  # a fused chain of several unary ops read through a non-contiguous view, with gradients into the base
  x = rnd(6, 5, seed=4, lo=0.2, hi=2)
  if view == "e": x = np.broadcast_to(x[:1], x.shape).copy()
  check(lambda a: np.sqrt(a) * np.exp(-a) + np.sin(a) / a, lambda t: t.sqrt() * (-t).exp() + t.sin() / t, x, views=[view])


def test_unary_0d_and_size1():
  check(np.exp, Tensor.exp, np.array(0.7))
  check(lambda a: np.tanh(a) * 2, lambda t: t.tanh() * 2, rnd(1, 3, 1, seed=5))
  check(lambda a: a.sum() * 0 + np.log(a), Tensor.log, rnd(1, seed=6, lo=0.5, hi=2))


BINARY = {
  "add": (np.add, lambda a, b: a + b, {}, {}),
  "sub": (np.subtract, lambda a, b: a - b, {}, {}),
  "mul": (np.multiply, lambda a, b: a * b, {}, {}),
  "div": (np.divide, lambda a, b: a / b, {}, dict(away=0.4)),
  "pow": (np.power, lambda a, b: a ** b, dict(lo=0.3, hi=2), dict(lo=-2, hi=2)),
  "maximum": (np.maximum, Tensor.maximum, {}, {}),
  "minimum": (np.minimum, Tensor.minimum, {}, {}),
}
SHAPES = [((7, 13), (7, 13)), ((7, 13), (13,)), ((7, 1), (1, 13)), ((), (3, 7)), ((2, 1, 5), (3, 1)), ((1,), (1, 1))]


@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcast(name, shapes):
  f_np, f_t, kwa, kwb = BINARY[name]
  a, b = rnd(*shapes[0], seed=1, **kwa), rnd(*shapes[1], seed=2, **kwb)
  check(f_np, f_t, a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_lowp(name, dtype):
  f_np, f_t, kwa, kwb = BINARY[name]
  check(f_np, f_t, rnd(7, 13, seed=1, **kwa), rnd(13, seed=2, **kwb), dtype=dtype)


@pytest.mark.parametrize("views", [("T", "s"), ("f", "T"), ("s", "n"), ("e", "f")])
def test_binary_views(views):
  a, b = rnd(6, 5, seed=1), rnd(6, 5, seed=2, away=0.3)
  if views[0] == "e": a = np.broadcast_to(a[:1], a.shape).copy()
  check(lambda x, y: x * y + x / y - np.maximum(x, y), lambda x, y: x * y + x / y - x.maximum(y), a, b, views=list(views))


def test_scalar_operands_and_reverse():
  x = rnd(3, 7, seed=3, lo=0.5, hi=2)
  check(lambda a: 2 - a, lambda t: 2 - t, x)
  check(lambda a: 3.0 / a, lambda t: 3.0 / t, x)
  check(lambda a: 2.0 ** a, lambda t: 2.0 ** t, x)
  check(lambda a: a ** 3, lambda t: t ** 3, x)
  check(lambda a: a ** -1.5, lambda t: t ** -1.5, x)
  check(lambda a: a * 0.5 + 1 - a / 4, lambda t: t * 0.5 + 1 - t / 4, x)
  check(lambda a: np.maximum(a, 1.0), lambda t: t.maximum(1.0), x + (np.abs(x - 1) < 0.05) * 0.1)
  check(lambda a: np.minimum(a, 1.0), lambda t: t.minimum(1.0), x + (np.abs(x - 1) < 0.05) * 0.1)


@pytest.mark.parametrize("dtype", FLOATS)
def test_pow_at_base_one_and_exponent_zero(dtype):
  """1**y and x**0 are 1, and their gradients are the formula's: y for the base at 1, log x for the
  exponent at 0 (a base that rounds to exactly 1 in bfloat16 once lost its gradient)."""
  a = np.array([[1.0, 0.7, 1.0, 2.3], [1.0, 1.6, 0.4, 1.0]])
  b = np.array([[2.5, 0.0, -1.3, 0.0], [0.7, 0.0, 1.9, 3.1]])
  check(np.power, lambda s, t: s ** t, a, b, dtype=dtype)
  check(lambda s: s ** 2.5, lambda t: t ** 2.5, a, dtype=dtype)
  out = Tensor([1.0, 0.0, 1.0]) ** Tensor([math.nan, 0.0, math.inf])
  np.testing.assert_array_equal(out.numpy(), [1.0, 1.0, 1.0])


def test_pow_negative_base():
  x = rnd(3, 7, seed=4, away=0.2)
  check(lambda a: a ** 3.0, lambda t: t ** Tensor(3.0), x)
  check(lambda a: a ** 2.0, lambda t: t ** Tensor(2.0), x)
  check(lambda a: a ** -1, lambda t: t ** -1, x)


def test_max_min_ties_split_gradient():
  a = Tensor([1.0, 2.0, 3.0], requires_grad=True)
  b = Tensor([1.0, 1.0, 4.0], requires_grad=True)
  a.maximum(b).sum().backward()
  np.testing.assert_allclose(a.grad.numpy(), [0.5, 1, 0])
  np.testing.assert_allclose(b.grad.numpy(), [0.5, 0, 1])


def test_int_arithmetic():
  a = np.array([[7, -7, 5], [-9, 11, 2]], np.int32)
  b = np.array([[2, 2, -3], [4, -5, 7]], np.int32)
  ta, tb = Tensor(a), Tensor(b)
  assert (ta + tb).dtype == dtypes.int32
  np.testing.assert_array_equal((ta + tb).numpy(), a + b)
  np.testing.assert_array_equal((ta * tb - 3).numpy(), a * b - 3)
  np.testing.assert_array_equal((ta // tb).numpy(), a // b)           # floored, as Python and torch
  np.testing.assert_array_equal((ta % tb).numpy(), a % b)
  np.testing.assert_array_equal(ta.div(tb, rounding_mode="trunc").numpy(), np.trunc(a / b).astype(np.int32))   # C's, the primitives'
  np.testing.assert_array_equal(ta.fmod(tb).numpy(), np.fmod(a, b))
  np.testing.assert_allclose((ta / tb).numpy(), a / b, rtol=1e-6)
  assert (ta / tb).dtype == dtypes.float32
  np.testing.assert_array_equal(ta.maximum(tb).numpy(), np.maximum(a, b))
  np.testing.assert_array_equal(ta.minimum(tb).numpy(), np.minimum(a, b))
  np.testing.assert_array_equal((-ta).numpy(), -a)
  np.testing.assert_array_equal(ta.abs().numpy(), np.abs(a))
  np.testing.assert_array_equal(ta.relu().numpy(), np.maximum(a, 0))
  np.testing.assert_array_equal(ta.clip(-5, 6).numpy(), np.clip(a, -5, 6))
  np.testing.assert_array_equal((ta ** Tensor(np.array([[3, 0, 2], [1, 4, 5]], np.int32))).numpy(), a ** np.array([[3, 0, 2], [1, 4, 5]]))
  np.testing.assert_array_equal((ta ** 2).numpy(), a ** 2)
  np.testing.assert_array_equal(ta.sign().numpy(), np.sign(a))
  big = Tensor(np.array([2 ** 31 - 1], np.int32))
  assert (big + 1).item() == -2 ** 31   # integers wrap


CMPS = {"lt": (np.less, lambda a, b: a < b), "gt": (np.greater, lambda a, b: a > b), "le": (np.less_equal, lambda a, b: a <= b),
        "ge": (np.greater_equal, lambda a, b: a >= b), "eq": (np.equal, lambda a, b: a == b), "ne": (np.not_equal, lambda a, b: a != b)}


@pytest.mark.parametrize("name", sorted(CMPS))
def test_compare(name):
  f_np, f_t = CMPS[name]
  r = np.random.default_rng(0)
  a = r.integers(-3, 3, size=(5, 7)).astype(np.float32)
  b = r.integers(-3, 3, size=(7,)).astype(np.float32)    # broadcast, with plenty of ties
  out = f_t(Tensor(a), Tensor(b))
  assert out.dtype == dtypes.bool and out.shape == (5, 7)
  np.testing.assert_array_equal(out.numpy(), f_np(a, b))
  np.testing.assert_array_equal(f_t(Tensor(a.astype(np.int32)), 1).numpy(), f_np(a, 1))
  np.testing.assert_array_equal(f_t(Tensor(a).half(), Tensor(b).bfloat16()).numpy(), f_np(a, b))
  np.testing.assert_array_equal(f_t(Tensor(a).T, 0.5).numpy(), f_np(a.T, 0.5))
  np.testing.assert_array_equal(f_t(2, Tensor(a)).numpy(), f_np(2, a))


def test_logical_and_bool_ops():
  a = np.array([True, False, True, False]); b = np.array([True, True, False, False])
  ta, tb = Tensor(a), Tensor(b)
  assert ta.dtype == dtypes.bool
  np.testing.assert_array_equal((ta & tb).numpy(), a & b)
  np.testing.assert_array_equal((ta | tb).numpy(), a | b)
  np.testing.assert_array_equal((ta ^ tb).numpy(), a ^ b)
  np.testing.assert_array_equal(ta.logical_not().numpy(), ~a)
  np.testing.assert_array_equal((-ta).numpy(), ~a)


def test_where():
  r = np.random.default_rng(1)
  c = r.random((5, 7)) > 0.5
  x, y = rnd(5, 7, seed=2), rnd(7, seed=3)
  tc = Tensor(c)
  check(lambda a, b: np.where(c, a, b), lambda a, b: where(tc, a, b), x, y)
  check(lambda a, b: np.where(c, a, b), lambda a, b: a.where(tc, b), x, y)          # torch's method: x.where(cond, y)
  check(lambda a: np.where(c, a, 2.5), lambda a: a.where(tc, 2.5), x)
  check(lambda b: np.where(c, -1.0, b), lambda b: where(tc, -1.0, b), x)
  check(lambda a, b: np.where(a > 0, a, b), lambda a, b: a.where(a > 0, b), x, y, grad=[True, True])
  np.testing.assert_array_equal(where(tc, 1, 0).numpy(), c.astype(np.int32))
  np.testing.assert_array_equal(where(Tensor(c.astype(np.float32)), 3.0, 4.0).numpy(), np.where(c, 3.0, 4.0))   # non-bool condition
  # condition broadcast against the values
  check(lambda a: np.where(c[:, :1], a, 0.0), lambda a: a.where(Tensor(c[:, :1]), 0.0), x)
  out = Tensor(x).half().where(tc, 0.0)
  assert out.dtype == dtypes.float16


def test_sign_and_misc():
  x = rnd(4, 6, seed=7, away=0.1)
  np.testing.assert_array_equal(Tensor(x).sign().numpy(), np.sign(x.astype(np.float32)))
  check(lambda a: np.clip(a, None, 0.3), lambda t: t.clip(max=0.3), x + (np.abs(x - 0.3) < 0.05) * 0.1)


def test_short_loops_unroll_only_small_bodies():
  """The CPU renderer writes loops of a few iterations out as copies of the body, but not a long expression (a random
  init's hashing copied 9 times took the C compiler 1.8 s): the copies stay within UNROLLED_NODES."""
  from trainer.core.schedule import create_schedule
  from trainer.core.codegen import cpu as cg
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 64, 3)).astype(np.float32)   # read as (64, 3, 3) through a permute: axes that do not merge
  for steps, copies in ((3, 9), (400, 1)):
    y, want = Tensor(x).permute(1, 0, 2), x.transpose(1, 0, 2).astype(np.float64)
    for _ in range(steps): y, want = (y * 0.5).sin(), np.sin(want * 0.5)
    kernels = [k for k in create_schedule([y.lazydata]) if hasattr(k, "ast")]
    src = cg.render(kernels[-1], "k")
    assert src.count("= k_sin(") == steps * copies, (steps, src.count("= k_sin("))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-6)
