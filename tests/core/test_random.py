"""The counter-based generator against a numpy threefry2x32-20 written here from the published algorithm
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"): the stream, the 64-bit counter's carry
into the high word, state save and restore, and slices of a draw."""
import numpy as np
from trainer.core import Tensor
from trainer.core import random as R
from trainer.core.device import canonical

M = np.uint64(0xFFFFFFFF)


def threefry_np(c0, c1, k0, k1):
  c0, c1 = c0.astype(np.uint64), c1.astype(np.uint64)
  ks = [np.uint64(k0), np.uint64(k1), np.uint64(k0 ^ k1 ^ 0x1BD11BDA)]
  rot = [13, 15, 26, 6, 17, 29, 16, 24]
  x0, x1 = (c0 + ks[0]) & M, (c1 + ks[1]) & M
  for i in range(20):
    x0 = (x0 + x1) & M
    r = np.uint64(rot[i % 8])
    x1 = (((x1 << r) | (x1 >> (np.uint64(32) - r))) & M) ^ x0
    if i % 4 == 3:
      s = i // 4 + 1
      x0, x1 = (x0 + ks[s % 3]) & M, (x1 + ks[(s + 1) % 3] + np.uint64(s)) & M
  return x0.astype(np.uint32)


def uniform_np(seed, start, n):
  ctr = np.uint64(start) + np.arange(n, dtype=np.uint64)
  bits = threefry_np(ctr & M, ctr >> np.uint64(32), seed, (seed * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)
  return (bits >> 8).astype(np.float32) * np.float32(1 / (1 << 24))


def test_stream_matches_reference_and_carries_into_the_high_word():
  Tensor.manual_seed(11)
  a = Tensor.rand(3, 7).numpy()
  b = Tensor.rand(5).numpy()
  np.testing.assert_array_equal(a.ravel(), uniform_np(11, 0, 21))
  np.testing.assert_array_equal(b, uniform_np(11, 21, 5))
  start = (1 << 32) - 6                       # a draw that crosses 2**32: the high word takes the carry
  dev = canonical(None)   # the default device (CUDA:0 when the GPU check runs the suite there)
  R.set_state({"seed": 11, "counters": {dev: start}})
  c = Tensor.rand(4, 3).numpy()
  np.testing.assert_array_equal(c.ravel(), uniform_np(11, start, 12))
  assert R.get_state()["counters"][dev] == start + 12
  assert len(set(c.ravel().tolist())) == 12


def test_state_restore_continues_the_stream_and_slices_of_a_draw_are_the_draw():
  Tensor.manual_seed(5)
  Tensor.rand(9)
  state = R.get_state()
  x = Tensor.rand(6, 10)
  full = x.numpy()
  np.testing.assert_array_equal(x[2:4, 3:].numpy(), full[2:4, 3:])
  R.set_state(state)
  np.testing.assert_array_equal(Tensor.rand(6, 10).numpy(), full)
  assert R.draws >= 3


def test_truncated_normal_is_the_normal_truncated_at_two():
  """R.truncated_normal: standard normal values truncated to [-2, 2] (what TF's truncated_normal, behind Keras's
  he_normal, draws). Checked against the float64 CDF (Phi(z) - Phi(-2)) / (Phi(2) - Phi(-2)) by the
  Kolmogorov-Smirnov distance, the mean and std of that law, and the bound; the same seed gives the same values."""
  import math
  n = 100_000
  Tensor.manual_seed(3)
  z = R.truncated_normal((50, 2000), "float32", canonical(None)).numpy().astype(np.float64).ravel()
  assert np.abs(z).max() <= 2.0 and np.abs(z).max() > 1.99
  phi = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))
  cdf = (phi(np.sort(z)) - phi(-2.0)) / (phi(2.0) - phi(-2.0))
  ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
  assert ks < 1.63 / math.sqrt(n), ks                         # the 1% critical value
  density = math.exp(-2) / math.sqrt(2 * math.pi)
  std = math.sqrt(1 - 4 * density / math.erf(math.sqrt(2)))  # 0.8796...: Keras's divisor for he_normal
  assert math.isclose(R.TRUNCATED_NORMAL_STD, std, rel_tol=1e-15)
  assert abs(z.mean()) < 4 * std / math.sqrt(n)
  assert abs(z.std() / std - 1) < 0.01
  Tensor.manual_seed(3)
  np.testing.assert_array_equal(R.truncated_normal((50, 2000), "float32", canonical(None)).numpy().ravel(), z.astype(np.float32))
