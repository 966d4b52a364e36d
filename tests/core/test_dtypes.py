"""Casts between every pair of dtypes, promotion, and bfloat16/float16 rounding on store."""
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from trainer.core.dtypes import promote, f32_to_bf16, bf16_to_f32
from opcheck import round_to

ALL = ["float32", "float16", "bfloat16", "int8", "int32", "int64", "uint8", "uint32", "bool"]
NP = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
      "uint32": np.uint32, "bool": np.bool_}
FLOAT_VALS = np.array([-3.75, -1.0, 0.0, 0.5, 2.5, 7.9, 100.0, 127.0, -0.3])
INT_VALS = np.array([-100, -1, 0, 1, 5, 127, 100, -128, 3])


def src_values(src, dst):
  unsigned = src.startswith("uint") or dst.startswith("uint")
  v = FLOAT_VALS if src.startswith(("float", "bfloat")) else (INT_VALS if src != "bool" else np.array([1, 0, 1, 1, 0, 0, 1, 0, 1]))
  return np.abs(v) if unsigned else v


def as_np(vals, dt):
  if dt == "bfloat16": return round_to(vals, "bfloat16").astype(np.float32)
  return vals.astype(NP[dt])


def reference(x, dst):
  if dst == "bool": return x != 0
  if dst in ("float32", "float16", "bfloat16"): return round_to(x.astype(np.float64), dst)
  if x.dtype.kind == "f": x = np.trunc(x)
  return x.astype(np.int64).astype(NP[dst])


@pytest.mark.parametrize("src", ALL)
def test_cast_all_pairs(src):
  for dst in ALL:
    x = as_np(src_values(src, dst), src)
    t = Tensor(x, dtype=src)
    np.testing.assert_array_equal(t.numpy(), x, err_msg=f"{src} upload")
    out = t.cast(dst)
    assert out.dtype == dtypes.get(dst)
    np.testing.assert_array_equal(out.numpy(), reference(x, dst), err_msg=f"{src} -> {dst}")
    # the same cast fused behind another op, and read through a flip
    np.testing.assert_array_equal(t.flip(0).cast(dst).numpy(), reference(x[::-1], dst), err_msg=f"{src} -> {dst} (flipped)")


def test_int_wrap_on_cast():
  x = np.array([300, -1, 256, 255, -129], np.int32)
  np.testing.assert_array_equal(Tensor(x).cast("uint8").numpy(), x.astype(np.uint8))
  np.testing.assert_array_equal(Tensor(x).cast("int8").numpy(), x.astype(np.int8))
  big = np.array([2 ** 40 + 5, -(2 ** 35)], np.int64)
  np.testing.assert_array_equal(Tensor(big).numpy(), big)
  np.testing.assert_array_equal((Tensor(big) + 1).numpy(), big + 1)


def test_cast_gradient():
  t = Tensor(np.array([1.5, -2.25], np.float32), requires_grad=True)
  (t.half().float() * 3).sum().backward()
  assert t.grad.dtype == dtypes.float32
  np.testing.assert_allclose(t.grad.numpy(), [3, 3])
  b = Tensor(np.array([1.5, -2.25], np.float32), dtype="bfloat16", requires_grad=True)
  (b.float() * 2).sum().backward()
  assert b.grad.dtype == dtypes.bfloat16
  np.testing.assert_allclose(b.grad.numpy(), [2, 2])


@pytest.mark.parametrize("a,b,out", [
  ("float32", "float16", "float32"), ("float16", "bfloat16", "float32"), ("bfloat16", "float32", "float32"),
  ("int32", "float16", "float16"), ("int64", "bfloat16", "bfloat16"), ("bool", "int8", "int8"), ("int8", "int32", "int32"),
  ("int32", "int64", "int64"), ("uint8", "int8", "int64"), ("uint8", "int32", "int32"), ("uint8", "uint32", "uint32"),
  ("bool", "bool", "bool"), ("bool", "float16", "float16"), ("uint32", "int32", "int64"),
])
def test_promotion(a, b, out):
  assert promote(dtypes.get(a), dtypes.get(b)) == dtypes.get(out)
  assert promote(dtypes.get(b), dtypes.get(a)) == dtypes.get(out)
  ta, tb = Tensor(np.array([1, 2]), dtype=a), Tensor(np.array([1, 0]), dtype=b)
  s = ta + tb
  assert s.dtype == dtypes.get(out)
  exp = ta.numpy().astype(np.int64) + tb.numpy().astype(np.int64) if out != "bool" else np.array([True, True])
  np.testing.assert_array_equal(s.numpy(), exp)


def test_scalar_promotion():
  assert (Tensor(np.ones(2, np.float16)) * 2.5).dtype == dtypes.float16
  assert (Tensor(np.ones(2), dtype="bfloat16") + 1).dtype == dtypes.bfloat16
  assert (Tensor(np.ones(2, np.int32)) * 2.5).dtype == dtypes.float32
  assert (Tensor(np.ones(2, np.int8)) + 1).dtype == dtypes.int8
  assert (Tensor(np.ones(2, np.int64)) + 1).dtype == dtypes.int64
  assert (Tensor(np.ones(2, np.bool_)) + 1).dtype == dtypes.int32
  assert (Tensor(np.ones(2, np.int32)) / 2).dtype == dtypes.float32
  assert (2.5 * Tensor(np.ones(2, np.int64))).dtype == dtypes.float32
  assert Tensor(np.array([1.0])).dtype == dtypes.float32            # float64 data becomes float32
  assert Tensor([1, 2]).dtype in (dtypes.int32, dtypes.int64)
  assert Tensor([True]).dtype == dtypes.bool
  assert Tensor(2.0).dtype == dtypes.float32 and Tensor(2).dtype == dtypes.int32


def bits(x): return np.array(x, np.float32)


def test_bf16_round_nearest_even():
  e = 2.0 ** -8
  vals = bits([1 + e, 1 + 3 * e, 1 + e + 2 ** -20, -(1 + e), -(1 + 3 * e), 1 + 5 * e, 3.4e38, -3.4e38, np.inf, -np.inf, 2 ** -130, 0.0])
  want = bits([1.0, 1 + 4 * e, 1 + 2 * e, -1.0, -(1 + 4 * e), 1 + 4 * e, np.inf, -np.inf, np.inf, -np.inf, 2 ** -130, 0.0])
  np.testing.assert_array_equal(bf16_to_f32(f32_to_bf16(vals)), want)                     # host conversion
  np.testing.assert_array_equal(Tensor(vals, dtype="bfloat16").numpy(), want)             # upload
  np.testing.assert_array_equal(Tensor(vals).cast("bfloat16").numpy(), want)              # stored by a kernel
  np.testing.assert_array_equal((Tensor(vals) * 1.0).bfloat16().numpy(), want)
  # a bf16 result computed in float32 rounds once when stored
  a, b = Tensor(bits([1 + 2 * e]), dtype="bfloat16"), Tensor(bits([1 + 2 * e]), dtype="bfloat16")
  np.testing.assert_array_equal((a * b).numpy(), bf16_to_f32(f32_to_bf16(bits([(1 + 2 * e) ** 2]))))
  nan = Tensor(bits([np.nan, -np.nan])).cast("bfloat16").numpy()
  assert np.isnan(nan).all()
  assert np.isnan(Tensor(bits([np.nan]), dtype="bfloat16").numpy()).all()


def test_f16_round_on_store():
  x = np.random.default_rng(0).standard_normal(101).astype(np.float32) * 100
  x[:4] = [65504.0, 70000.0, 1e-8, -65520.0]
  with np.errstate(over="ignore"):
    want = x.astype(np.float16)
    np.testing.assert_array_equal(Tensor(x).half().numpy(), want)
    np.testing.assert_array_equal(Tensor(x, dtype="float16").numpy(), want)


def test_dtype_errors():
  with pytest.raises(TypeError, match="unsupported dtype 'float8'"): Tensor([1.0], dtype="float8")
  with pytest.raises(TypeError, match="unsupported dtype"): Tensor([1.0]).cast("complex64")
  with pytest.raises(TypeError, match="unsupported dtype"): Tensor(np.array([1 + 2j]))
  with pytest.raises(TypeError, match="float8"): Tensor.zeros(2, dtype="float8")


def bf16_nearest(x: np.ndarray) -> np.ndarray:
  """An independent bit-level bfloat16 reference: of the two bf16 neighbours of each float32 (its upper 16 bits
  truncated, and the next one out), the nearer in float64, ties to the even one; NaN stays NaN."""
  u = np.asarray(x, np.float32).view(np.uint32)
  lo = (u & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
  hi_bits = (u & np.uint32(0xFFFF0000)) + np.uint32(0x10000)
  hi = hi_bits.view(np.float32).astype(np.float64)
  xd = np.asarray(x, np.float64)
  with np.errstate(invalid="ignore"):
    d_lo, d_hi = np.abs(xd - lo), np.abs(hi - xd)
    lo_even = ((u >> np.uint32(16)) & np.uint32(1)) == 0
    out = np.where((d_lo < d_hi) | ((d_lo == d_hi) & lo_even), lo, hi)
  out = np.where(np.isinf(xd), xd, out)
  return np.where(np.isnan(xd), np.nan, out).astype(np.float32)


def test_fused_cast_rounds_as_a_store_would():
  from trainer.core import realize as R
  rng = np.random.default_rng(7)
  e = 2.0 ** -8
  x = np.concatenate([rng.standard_normal(997).astype(np.float32) * 10,
                      bits([1 + e, 1 + 3 * e, -(1 + e), 1 + e + 2 ** -20, 3.4e38, 2 ** -130, 65504.0, 7e4, 1e-8])])
  for dt, ref in (("bfloat16", bf16_nearest), ("float16", lambda v: v.astype(np.float16).astype(np.float32))):
    before = R.stats["kernels"]
    y = ((Tensor(x) * 1.0).cast(dt).cast("float32") * 2.0).numpy()   # one kernel: the cast is fused, not stored
    assert R.stats["kernels"] - before == 1
    with np.errstate(over="ignore"):
      np.testing.assert_array_equal(y, ref(x) * np.float32(2.0), err_msg=dt)
  # a narrowing cast feeding a reduction rounds each element before the sum
  m = rng.standard_normal((37, 129)).astype(np.float32)
  got = Tensor(m).cast("bfloat16").cast("float32").sum(-1).numpy()
  np.testing.assert_allclose(got, bf16_nearest(m).astype(np.float64).sum(-1), rtol=1e-5)
  assert np.abs(got - m.astype(np.float64).sum(-1)).max() > 1e-3   # the rounding is visible in the result
