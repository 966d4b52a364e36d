"""Views: how a kernel indexes a buffer. Movement ops change the view, never the data.

A View maps an index (i_0..i_n) in `shape` to the element `offset + sum(i_k * strides[k])` of a flat
buffer. `mask` (one half-open range per axis, or None) marks where the view holds real data; outside
it the value is 0 (this is how `pad` works without copying). Size-1 axes always have stride 0.

Every movement op returns a new View, or None where one View cannot express the result (a reshape
that would need a copy); the caller then materialises the data and retries on a contiguous view.
"""
from __future__ import annotations
from dataclasses import dataclass
import math


def contiguous_strides(shape) -> tuple:
  strides, acc = [], 1
  for s in reversed(shape):
    strides.append(acc if s != 1 else 0)
    acc *= s
  return tuple(reversed(strides))


@dataclass(frozen=True)
class View:
  shape: tuple
  strides: tuple
  offset: int = 0
  mask: tuple | None = None

  @staticmethod
  def create(shape, strides=None, offset=0, mask=None) -> View:
    shape = tuple(int(s) for s in shape)
    strides = contiguous_strides(shape) if strides is None else tuple(0 if s == 1 else int(st) for s, st in zip(shape, strides))
    if mask is not None:
      mask = tuple((max(0, lo), min(s, hi)) for (lo, hi), s in zip(mask, shape))
      if any(lo >= hi for lo, hi in mask): mask = tuple((0, 0) for _ in shape)
      elif all(lo == 0 and hi == s for (lo, hi), s in zip(mask, shape)): mask = None
    return View(shape, strides, int(offset), mask)

  @property
  def size(self): return math.prod(self.shape)
  @property
  def contiguous(self): return self.offset == 0 and self.mask is None and self.strides == contiguous_strides(self.shape)
  def ranges(self): return self.mask if self.mask is not None else tuple((0, s) for s in self.shape)

  # ---- movement ops ----
  def permute(self, order) -> View:
    m = None if self.mask is None else tuple(self.mask[o] for o in order)
    return View.create([self.shape[o] for o in order], [self.strides[o] for o in order], self.offset, m)

  def expand(self, shape) -> View:
    m = None if self.mask is None else tuple((0, ns) if (s == 1 and ns != 1 and r == (0, 1)) else ((0, 0) if s == 1 and ns != 1 else r)
                                          for r, s, ns in zip(self.mask, self.shape, shape))
    return View.create(shape, [0 if s == 1 else st for s, st in zip(self.shape, self.strides)], self.offset, m)

  def pad(self, arg) -> View:
    offset = self.offset - sum(b * st for (b, _), st in zip(arg, self.strides))
    shape = [s + b + a for s, (b, a) in zip(self.shape, arg)]
    mask = [(lo + b, hi + b) for (lo, hi), (b, _) in zip(self.ranges(), arg)]
    return View.create(shape, self.strides, offset, mask)

  def shrink(self, arg) -> View:
    offset = self.offset + sum(lo * st for (lo, _), st in zip(arg, self.strides))
    mask = None if self.mask is None else [(mlo - lo, mhi - lo) for (mlo, mhi), (lo, _) in zip(self.mask, arg)]
    return View.create([hi - lo for lo, hi in arg], self.strides, offset, mask)

  def flip(self, axes) -> View:
    offset = self.offset + sum((self.shape[a] - 1) * self.strides[a] for a in axes)
    strides = [-st if i in axes else st for i, st in enumerate(self.strides)]
    mask = None if self.mask is None else [(s - hi, s - lo) if i in axes else (lo, hi) for i, ((lo, hi), s) in enumerate(zip(self.mask, self.shape))]
    return View.create(self.shape, strides, offset, mask)

  def reshape(self, new_shape) -> View | None:
    new_shape = tuple(new_shape)
    if new_shape == self.shape: return self
    if self.mask is not None and any(lo >= hi for lo, hi in self.mask): return None
    if self.mask is None and self.strides == contiguous_strides(self.shape):
      return View.create(new_shape, None, self.offset)
    old = [(s, st, r) for s, st, r in zip(self.shape, self.strides, self.ranges()) if s != 1]
    new = [s for s in new_shape if s != 1]
    out, i, j = [], 0, 0   # out: (size, stride, range) for each non-1 new axis
    while i < len(old) or j < len(new):
      gi, gj = [old[i]], [new[j]]
      i, j = i + 1, j + 1
      po, pn = gi[0][0], gj[0]
      while po != pn:
        if po < pn: gi.append(old[i]); po *= old[i][0]; i += 1
        else: gj.append(new[j]); pn *= new[j]; j += 1
      if len(gi) == 1 and len(gj) == 1:
        out.append(gi[0]); continue
      if any(r != (0, s) for s, _, r in gi): return None
      if any(gi[k][1] != gi[k + 1][1] * gi[k + 1][0] for k in range(len(gi) - 1)): return None
      st = gi[-1][1]
      strides = []
      for s in reversed(gj): strides.append(st); st *= s
      out.extend((s, stv, (0, s)) for s, stv in zip(gj, reversed(strides)))
    it = iter(out)
    strides, mask = [], []
    for s in new_shape:
      if s == 1: strides.append(0); mask.append((0, 1))
      else: _, st, r = next(it); strides.append(st); mask.append(r)
    return View.create(new_shape, strides, self.offset, None if self.mask is None else mask)

  # ---- composition ----
  def compose(self, inner: View) -> View | None:
    """Read `inner` (a view of some source, with shape B) through self (a view over a contiguous
    buffer of shape B). Returns the single view from self's index space into inner's source, or None
    where self mixes axes of B (a reshape that splits or merges them)."""
    base = inner.shape
    if self.size == 0: return None
    if self.contiguous and self.shape != base and self.size == math.prod(base):   # a plain reshape of B: inner itself reshaped, where a view can say it
      return inner.reshape(self.shape)
    cst = contiguous_strides(base)
    ranges = self.ranges()
    if any(lo >= hi for lo, hi in ranges): return None
    axis_of = {}  # view axis j -> base axis k
    for j, (s, st) in enumerate(zip(self.shape, self.strides)):
      if st == 0: continue
      ks = [k for k in range(len(base)) if base[k] > 1 and cst[k] == abs(st) and k not in axis_of.values()]
      if not ks: return None
      axis_of[j] = ks[0]
    # base index of the first valid element, then each base axis as first + sign * (i_j - lo_j)
    flat = self.offset + sum(lo * st for (lo, _), st in zip(ranges, self.strides))
    if not 0 <= flat < math.prod(base): return None
    first = []
    for s in reversed(base): first.append(flat % s); flat //= s
    first = first[::-1]
    off = list(first)
    strides, mask = [0] * len(self.shape), list(ranges)
    for j, k in axis_of.items():
      sign = 1 if self.strides[j] > 0 else -1
      lo, hi = ranges[j]
      off[k] = first[k] - sign * lo
      lo_b, hi_b = (off[k] + lo, off[k] + hi - 1) if sign > 0 else (off[k] - (hi - 1), off[k] - lo)
      if lo_b < 0 or hi_b >= base[k]: return None
      strides[j] = sign * inner.strides[k]
      if inner.mask is not None:
        ilo, ihi = inner.mask[k]
        jlo, jhi = (ilo - off[k], ihi - off[k]) if sign > 0 else (off[k] - ihi + 1, off[k] - ilo + 1)
        mask[j] = (max(mask[j][0], jlo), min(mask[j][1], jhi))
    mapped = set(axis_of.values())
    if inner.mask is not None and any(k not in mapped and not (inner.mask[k][0] <= off[k] < inner.mask[k][1]) for k in range(len(base))):
      mask = [(0, 0)] * len(self.shape)
    offset = inner.offset + sum(inner.strides[k] * off[k] for k in range(len(base)))
    return View.create(self.shape, strides, offset, mask)
