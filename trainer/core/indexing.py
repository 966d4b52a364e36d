"""Tensor.__getitem__: torch's basic and advanced indexing, composed from movement ops and a row gather.

  ints, slices (negative steps too), None, Ellipsis     views (shrink, flip, pad, reshape)
  an integer tensor, array or list                      the rows it names along its axis, negative ones
                                                        counted from the end (out of range reads zeros)
  a bool tensor, array or list (a mask)                 the entries where it is True, over the axes it
                                                        covers (its shape must match theirs), as torch
  True / False                                          a new axis of size 1 / 0

A mask gives a shape that depends on its values, so indexing with one realizes the mask (`numpy()`)
and gathers the rows it selects. One tensor or mask index per expression.
"""
from __future__ import annotations
import math
import numpy as np
from .dtypes import dtypes
from .kernels.rows import take_rows
from .tensor import Tensor, where, _shape_str


def _mask(i) -> np.ndarray | None:
  """i as a numpy bool array if it is a boolean index, else None."""
  if isinstance(i, (bool, np.bool_)): return np.asarray(i)
  if isinstance(i, Tensor): return i.numpy() if i.dtype is dtypes.bool else None
  if isinstance(i, (list, np.ndarray)):
    a = np.asarray(i)
    return a if a.dtype == bool else None
  return None


def _rows(x: Tensor, axis: int, idx: Tensor) -> Tensor:
  """x with `axis` replaced by the axes of idx: x[..., idx, ...] (negative indices wrap once)."""
  n = x.shape[axis]
  idx = where(idx < 0, idx + n, idx)
  rest = x.shape[:axis] + x.shape[axis + 1:]
  table = x.movedim(axis, 0).reshape(n, math.prod(rest))
  out = take_rows(table, idx).reshape(idx.shape + rest)                  # (*idx, *rest)
  k = idx.ndim
  return out.permute(tuple(range(k, k + axis)) + tuple(range(k)) + tuple(range(k + axis, k + len(rest))))


def getitem(t: Tensor, idx) -> Tensor:
  idx = idx if isinstance(idx, tuple) else (idx,)
  masks = [_mask(i) for i in idx]
  used = sum(0 if i is None or i is Ellipsis else (m.ndim if m is not None else 1) for i, m in zip(idx, masks))
  if used > t.ndim: raise IndexError(f"too many indices for tensor of shape {_shape_str(t.shape)}: {used} axes indexed")
  if sum(i is Ellipsis for i in idx) > 1: raise IndexError("an index can only have a single ellipsis ('...')")
  items = []
  for i, m in zip(idx, masks):
    if i is Ellipsis: items += [(slice(None), None)] * (t.ndim - used)
    else: items.append((i, m))
  if not any(i is Ellipsis for i in idx): items += [(slice(None), None)] * (t.ndim - used)
  x, ax, gathers = t, 0, []     # ax: the axis of x the next index applies to
  for i, m in items:
    if i is None:
      x = x.unsqueeze(ax); ax += 1
    elif m is not None:
      k = m.ndim
      if x.shape[ax:ax + k] != m.shape:
        raise IndexError(f"the mask of shape {_shape_str(m.shape)} does not match the indexed axes {_shape_str(x.shape[ax:ax + k])} of {_shape_str(t.shape)}")
      x = x.reshape(x.shape[:ax] + (math.prod(m.shape),) + x.shape[ax + k:])
      gathers.append((ax, Tensor(np.flatnonzero(m).astype(np.int32), device=t.device))); ax += 1
    elif isinstance(i, (int, np.integer)):
      n, i = x.shape[ax], int(i)
      if not -n <= i < n: raise IndexError(f"index {i} is out of bounds for dimension {ax} with size {n}")
      i %= n
      x = x.shrink(tuple((i, i + 1) if a == ax else (0, s) for a, s in enumerate(x.shape)))
      x = x.reshape(x.shape[:ax] + x.shape[ax + 1:])
    elif isinstance(i, slice):
      x = _slice(x, ax, i); ax += 1
    elif isinstance(i, (Tensor, list, np.ndarray)):
      it = i if isinstance(i, Tensor) else Tensor(np.asarray(i), device=t.device)
      if not it.dtype.is_int: raise IndexError(f"tensors used as indices must be integer or bool, got {it.dtype.name}")
      gathers.append((ax, it)); ax += 1
    else: raise IndexError(f"unsupported index {i!r}")
  if len(gathers) > 1: raise IndexError("only one tensor (or mask) index per indexing expression is supported")
  for a, it in gathers: x = _rows(x, a, it)
  return x


def _slice(x: Tensor, ax: int, sl: slice) -> Tensor:
  n = x.shape[ax]
  start, stop, step = sl.indices(n)
  if step < 0:
    x = x.flip(ax)
    start, stop, step = n - 1 - start, n - 1 - stop, -step
  length = max(0, math.ceil((stop - start) / step))
  x = x.shrink(tuple((start, min(n, start + length * step)) if a == ax else (0, s) for a, s in enumerate(x.shape)))
  if step > 1 and length > 0:
    sz = x.shape[ax]
    x = x.pad(tuple((0, length * step - sz) if a == ax else (0, 0) for a in range(x.ndim)))
    x = x.reshape(x.shape[:ax] + (length, step) + x.shape[ax + 1:])
    x = x.shrink(tuple((0, 1) if a == ax + 1 else (0, s) for a, s in enumerate(x.shape)))
    x = x.reshape(x.shape[:ax + 1] + x.shape[ax + 2:])
  return x
