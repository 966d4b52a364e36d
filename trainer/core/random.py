"""Counter-based random numbers: threefry2x32 (20 rounds) keyed by the seed, applied to a 64-bit counter.

Each device keeps its counter (two uint32 words, low then high) in a device buffer that every draw
advances in place, so a JIT-replayed step draws fresh numbers, the same seed gives the same stream, and a
checkpoint can save and restore the state (`get_state` / `set_state`). Element i of a draw gets counter
value base + i, where base is the counter when the draw was made: the draw copies the counter (a tiny
kernel) and moves it on, and the bits themselves stay lazy, computed from per-axis index ramps where a
kernel reads them. So a draw needs no buffer of its own size, and a slice of it (a tensor-parallel
shard) computes only its own elements. `uniform` gives floats in [0, 1); `truncated_normal` the normal
truncated at 2 std (Keras's he_normal), one uniform per value.
"""
from __future__ import annotations
import math
import numpy as np
from .dtypes import dtypes
from .device import canonical

_seed = 0
_counters: dict = {}   # device -> Tensor (uint32, shape (2,): low word, high word)
draws = 0              # draws made so far in this process (recompute checks that a region makes none)
ROT = ((13, 15, 26, 6), (17, 29, 16, 24))
MASK = 0xFFFFFFFF


def manual_seed(seed: int):
  global _seed
  _seed = int(seed) & MASK
  _counters.clear()


def get_state() -> dict:
  def value(c):
    lo, hi = (int(w) for w in c.numpy())
    return lo | hi << 32
  return {"seed": _seed, "counters": {d: value(c) for d, c in _counters.items()}}


def set_state(state: dict):
  manual_seed(state["seed"])
  from .tensor import Tensor
  for d, v in state["counters"].items(): _counters[d] = Tensor(np.array([v & MASK, v >> 32], np.uint32), device=d)


def counter_tensors(): return list(_counters.values())


def _counter(device):
  from .tensor import Tensor
  if device not in _counters: _counters[device] = Tensor(np.zeros(2, np.uint32), device=device)
  return _counters[device]


def _rotl(x, r): return (x << r) | (x >> (32 - r))


def threefry(x0, x1, k0: int, k1: int):
  """threefry2x32-20 of the counter pair (x0, x1) (uint32 tensors) with key (k0, k1)."""
  ks = (k0, k1, (k0 ^ k1 ^ 0x1BD11BDA) & MASK)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for block in range(5):
    for r in ROT[block % 2]:
      x0 = x0 + x1; x1 = _rotl(x1, r) ^ x0
    x0 = x0 + ks[(block + 1) % 3]; x1 = x1 + (ks[(block + 2) % 3] + block + 1) & MASK
  return x0, x1


def _linear_index(shape, device):
  """The row-major element number at every position of `shape`, as uint32, from one small ramp per axis."""
  from .tensor import Tensor, _ramp
  idx, stride = Tensor.full(shape, 0, dtype=dtypes.uint32, device=device), 1
  for a in reversed(range(len(shape))):
    if shape[a] > 1:
      ramp = _ramp(shape[a], device).cast(dtypes.uint32).reshape([shape[a] if i == a else 1 for i in range(len(shape))])
      idx = idx + (ramp * stride if stride > 1 else ramp).expand(shape)
    stride *= shape[a]
  return idx


def random_bits(shape, device: str):
  """uint32 random words of `shape`: the next prod(shape) values of the device's stream."""
  global draws
  from .tensor import Tensor
  n = math.prod(shape)
  if n > MASK: raise ValueError(f"random draw of {n} elements: one draw takes at most 2**32 - 1")
  ctr = _counter(device)
  base = (ctr + 0).realize()           # the counter as it is now; the bits below are lazy
  lo = ctr[0:1] + n
  ctr.assign(Tensor.cat([lo, ctr[1:2] + (lo < n).cast(dtypes.uint32)])).realize()
  draws += 1
  idx = _linear_index(tuple(shape), device)
  x0 = idx + base[0:1].reshape((1,) * len(shape)).expand(shape)
  x1 = base[1:2].reshape((1,) * len(shape)).expand(shape) + (x0 < idx).cast(dtypes.uint32)   # carry into the high word
  key = (_seed * 0x9E3779B9 + 0x7F4A7C15) & MASK
  bits, _ = threefry(x0, x1, _seed, key)
  return bits


TRUNCATED_NORMAL_STD = 0.87962566103423978   # std of a standard normal truncated to [-2, 2]
NEWTON_STEPS = 6   # from 0, six steps bring erf(y) = q to float32 precision for every |q| <= erf(sqrt 2)


def truncated_normal(shape, dtype, device):
  """Standard normal values truncated to [-2, 2]: the law of TF's truncated_normal (which redraws values
  beyond 2 std), by the inverse CDF, so each value costs one uniform and the draw stays lazy. z = sqrt(2) y
  with erf(y) = q uniform over [-erf(sqrt 2), erf(sqrt 2)), y found by Newton's method from 0: erf is
  concave for y > 0 and convex for y < 0, so the steps approach the root from 0's side and never pass it."""
  q = (uniform(shape, dtypes.float32, device) * 2 - 1) * math.erf(math.sqrt(2))
  y = q * 0
  for _ in range(NEWTON_STEPS): y = y - (y.erf() - q) * (y * y).exp() * (math.sqrt(math.pi) / 2)
  return (y * math.sqrt(2)).clamp(-2.0, 2.0).cast(dtypes.get(dtype)).detach()   # the clamp only catches rounding


def uniform(shape, dtype, device, requires_grad=False):
  """Floats in [0, 1): the top 24 bits of each random word."""
  from .tensor import Tensor
  n = math.prod(shape)
  if n == 0: return Tensor(np.zeros(shape, np.float32), device=device, dtype=dtype)
  device = canonical(device)
  bits = random_bits(tuple(shape), device)
  u = ((bits >> 8).cast(dtypes.int32).cast(dtypes.float32) * (1.0 / (1 << 24))).cast(dtype).detach()
  u.requires_grad = requires_grad
  return u
