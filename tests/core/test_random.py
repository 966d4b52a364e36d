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
