"""What precision the matrix work of a program ran in, for the MLPerf log's disclosures.

Linear layers and attention note the dtype their operands were read in when they are called (after
type promotion), and the collectives note the dtype they move; `lowest(kind)` is the narrowest noted.
The training loop clears the record before its first step and reads it after, so the log says what ran.
"""
from __future__ import annotations
from .dtypes import DType

KINDS = ("linear", "attention", "comm")
seen: dict[str, set] = {k: set() for k in KINDS}


def note(kind: str, dtype: DType):
  seen[kind].add(dtype)


def clear():
  for s in seen.values(): s.clear()


def lowest(kind: str) -> DType | None:
  """The narrowest float dtype noted for `kind` (None if nothing was)."""
  floats = [d for d in seen[kind] if d.is_float]
  return min(floats, key=lambda d: (d.itemsize, d.name)) if floats else None
