"""The ring engine behind collectives.py: runs one collective over device buffers.

The flat data is cut into one chunk per device (`bounds`) and each chunk into pieces (`pieces`).
Reduce-scatter: chunk c starts on device c+1 and travels the ring c+1 -> c+2 -> ... -> c; each hop is a
peer copy into the receiving device's buffer and an add there of that device's own part, so the chunk
ends reduced on device c. All-gather: each finished chunk travels on around the ring, copied into the
same place of every device's output, so nothing is concatenated afterwards.

Every hop of every piece is ordered only by what it needs (events): the copy after its source piece is
final on the sender and its destination is free, the add after the copy. Copies into a device run on
that device's copy stream, adds on its compute stream, and the hops are issued as a wavefront (stage j
of piece k together with stage j-1 of piece k+1), so while one piece is being added the next is already
on the link, and each link carries traffic in both directions at once. At the start the copies wait for
the work queued before the collective on both devices they touch; at the end each device's compute
stream waits for every copy that read or wrote its memory, so what follows may reuse that memory.
On CPU devices the same schedule runs with synchronous copies and numpy adds.
"""
from __future__ import annotations
from ..core.dtypes import DType, dtypes

PIECE_BYTES = 8 << 20    # the smallest piece worth its own copy and add (launch and event costs)
MAX_PIECES = 16          # per chunk: more only adds Python issue time
ALIGN = 64               # piece boundaries fall on multiples of this many elements


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
  """Split n elements into `parts` contiguous chunks whose sizes differ by at most one."""
  q, r = divmod(n, parts)
  out, lo = [], 0
  for i in range(parts):
    hi = lo + q + (1 if i < r else 0)
    out.append((lo, hi)); lo = hi
  return out


def pieces(lo: int, hi: int, itemsize: int) -> list[tuple[int, int]]:
  """[lo, hi) cut into at most MAX_PIECES pieces of at least PIECE_BYTES, inner cuts on ALIGN multiples."""
  count = max(1, min(MAX_PIECES, (hi - lo) * itemsize // PIECE_BYTES))
  step, base = -(-(hi - lo) // count // ALIGN) * ALIGN, lo // ALIGN * ALIGN
  cuts = [lo] + [base + m * step for m in range(1, count) if lo < base + m * step < hi] + [hi]
  return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class RingCollective:
  """One collective over `devices` (kind 'all_reduce', 'reduce_scatter' or 'all_gather') of `numel`
  elements, op 'sum', 'mean' or 'max'; `sizes`: the chunks' sizes if not as `bounds` (all_gather's inputs).
  It is the arg of its lazy outputs (LazyBuffer.collective) and runs with plain buffers, in a call or in
  a JIT replay."""
  def __init__(self, kind: str, devices: list[str], numel: int, dtype: DType, op: str = "sum", sizes=None):
    assert kind in ("all_reduce", "reduce_scatter", "all_gather") and op in ("sum", "mean", "max")
    self.kind, self.devices, self.numel, self.dtype = kind, list(devices), numel, dtype
    self.op = "max" if op == "max" or dtype is dtypes.bool else "sum"
    self.scale = 1.0 / len(devices) if op == "mean" and dtype is not dtypes.bool else None
    if sizes is None: self.chunks = bounds(numel, len(devices))
    else:
      ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
      self.chunks = list(zip([0] + ends[:-1], ends))
    self.outputs = []   # weak references to the lazy outputs (set by LazyBuffer.collective)
    self.steps = self._steps()

  def _steps(self) -> list[tuple]:
    """The hops in issue order: (wavefront position, stage j: reduce-scatter hop j (1..n-1) or all-gather
    hop j-n, piece index, chunk, lo, hi), sorted by position then stage."""
    n, steps = len(self.devices), []
    stages = (list(range(1, n)) if self.kind != "all_gather" else []) + ([n + h for h in range(n - 1)] if self.kind != "reduce_scatter" else [])
    for c, (clo, chi) in enumerate(self.chunks):
      for k, (lo, hi) in enumerate(pieces(clo, chi, self.dtype.itemsize)):
        steps += [(k + j, j, k, c, lo, hi) for j in stages]
    return sorted(steps, key=lambda s: s[:2])

  def __repr__(self): return f"RingCollective({self.kind}, {len(self.devices)} devices, {self.numel} x {self.dtype.name}, {self.op})"

  def out_specs(self) -> list[tuple]:
    """(device, dtype, shape) of each output."""
    if self.kind == "reduce_scatter": return [(d, self.dtype, (hi - lo,)) for d, (lo, hi) in zip(self.devices, self.chunks)]
    return [(d, self.dtype, (self.numel,)) for d in self.devices]

  def run(self, ins: list, outs: list):
    """Inputs and outputs: Buffers (or arena blocks at least as large), one of each per device."""
    n, isz, kind = len(self.devices), self.dtype.itemsize, self.kind
    rts = [b.runtime for b in outs]
    region = lambda bufs, d, lo, hi: rts[d].view(bufs[d].handle, lo * isz, (hi - lo) * isz)
    # where device d keeps the running value of chunk c's elements [lo, hi): reduce_scatter's outputs
    # hold only their own chunk, so other chunks' partial sums go to a scratch buffer
    scratch = [None] * n
    if kind == "reduce_scatter" and n > 2:
      from ..core.device import Buffer
      scratch = [Buffer(self.devices[d], self.numel, self.dtype) for d in range(n)]
    def acc(d, c, lo, hi):
      if kind != "reduce_scatter": return region(outs, d, lo, hi)
      if c == d: return region(outs, d, lo - self.chunks[c][0], hi - self.chunks[c][0])
      return region(scratch, d, lo, hi)

    start = [rt.mark() for rt in rts]
    ready, busy, touched, made = {}, {}, [dict() for _ in range(n)], list(start)

    def copy(s, t, dst, src, nbytes, after, key=None):
      """key (chunk, piece start): the piece tracked in `ready` and `busy`; None: an input is the source."""
      ev = rts[t].copy_async(rts[s], dst, src, nbytes, [start[s], start[t], *after, *busy.pop((t, key), [])])
      if key is not None: busy.setdefault((s, key), []).append(ev)    # the source may not be overwritten before this copy is done
      touched[s][t] = touched[t][t] = ev           # copies on t's copy stream finish in order: the last one counts
      made.append(ev)
      return ev

    if kind == "all_gather":   # each device's own chunk into its output (its copy stream, alongside the ring)
      for c, (lo, hi) in enumerate(self.chunks):
        copy(c, c, region(outs, c, lo, hi), rts[c].view(ins[c].handle, 0, (hi - lo) * isz), (hi - lo) * isz, [])
    for _, j, k, c, lo, hi in self.steps:
      key, nbytes = (c, lo), (hi - lo) * isz
      if j < n:   # reduce-scatter hop j: from device c+j to c+j+1, which adds its own part
        s, t = (c + j) % n, (c + j + 1) % n
        dst = acc(t, c, lo, hi)
        if j == 1: ev = copy(s, t, dst, region(ins, s, lo, hi), nbytes, [])
        else: ev = copy(s, t, dst, acc(s, c, lo, hi), nbytes, [ready[(s, key)]], key)
        rts[t].wait([ev])
        rts[t].accumulate(dst, region(ins, t, lo, hi), hi - lo, self.dtype, self.op, self.scale if t == c else None)
        ready[(t, key)] = rts[t].mark(); made.append(ready[(t, key)])
      else:       # all-gather hop h: the final piece from device c+h to c+h+1
        h = j - n
        s, t = (c + h) % n, (c + h + 1) % n
        if kind == "all_gather" and h == 0:
          ready[(t, key)] = copy(s, t, region(outs, t, lo, hi), rts[s].view(ins[s].handle, (lo - self.chunks[c][0]) * isz, nbytes), nbytes, [])
        else: ready[(t, key)] = copy(s, t, region(outs, t, lo, hi), region(outs, s, lo, hi), nbytes, [ready[(s, key)]], key)

    for d in range(n): rts[d].wait(list(touched[d].values()))
    rts[0].release(made)
    del scratch   # freed after the waits above: later users of the memory come after the copies

