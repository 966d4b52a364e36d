"""The JIT: `@jit` on a step function. The first call runs normally (compiling every kernel), the
second runs while recording each kernel launch, and from then on a call replays the recorded launches:
no graph building, scheduling or codegen in Python.

After the recording the JIT plans memory: a buffer that nothing outside the step holds (an
intermediate) gets a slice of one arena block per device, placed as an allocator replaying the step
would place it, so a replayed step needs little more memory than its largest live set. Each tensor
argument is copied into a private buffer at the start of a replay. On CUDA, each run of consecutive
kernel launches on one device is captured once as a CUDA graph and replayed with one graph launch, so
the Python cost of a step does not grow with its number of kernels (TRAINER_CUDA_GRAPHS=0 replays launch by
launch instead, e.g. to time each kernel).

Rules for a jitted function: its tensor arguments keep their shapes, dtypes and devices from call to
call and are only read; state it changes (weights, optimizer moments) is updated with `assign`, so the
same buffers are rewritten each step (every assign made during the call runs before the call returns);
it returns tensors (or a tuple/list/dict of them) whose buffers are reused by the next call, so copy a
result out (`.numpy()`) before calling again if you need to keep it. Values the host computes for each call (an
optimizer's step number) are written by a function given to `each_call`, which a replay calls first.
"""
from __future__ import annotations
import bisect, functools, os, weakref
from .tensor import Tensor, pending_assigns
from .device import Buffer
from .dtypes import dtypes
from . import realize as R
from . import random


def _tensors(x):
  if isinstance(x, Tensor): return [x]
  if isinstance(x, (list, tuple)): return [t for v in x for t in _tensors(v)]
  if isinstance(x, dict): return [t for v in x.values() for t in _tensors(v)]
  return _tensors(x.shards) if hasattr(x, "shards") else []   # a tensor-parallel Sharded


class JitFunction:
  def __init__(self, fn):
    self.fn, self.calls, self.kernel_count, self.arena_bytes = fn, 0, None, None
    functools.update_wrapper(self, fn)

  def _inputs(self, args, kwargs):
    ins = _tensors(list(args) + list(kwargs.values()))
    for t in ins:
      if t.lazydata.op.name != "BUFFER" or not t.lazydata.realized: t.lazydata = t.lazydata.contiguous()
    Tensor.realize_all(*ins)
    return ins

  def _run(self, args, kwargs):
    out = self.fn(*args, **kwargs)
    Tensor.realize_all(*_tensors(out), *random.counter_tensors(), *list(pending_assigns.values()))
    return out

  def __call__(self, *args, **kwargs):
    self.calls += 1
    if self.calls == 1: return self._run(args, kwargs)
    ins = self._inputs(args, kwargs)
    sig = [(t.shape, t.dtype, t.device) for t in ins]
    if self.calls == 2:
      self.signature = sig
      R.capturing = rec = _Recorder()
      try: self.out = self._run(args, kwargs)
      finally: R.capturing = None
      self.kernel_count, self.host_steps = len(rec.table), rec.host_steps
      self._plan(rec, [t.lazydata.buffer for t in ins])
      return self.out
    if sig != self.signature:
      raise ValueError(f"jit: inputs changed from {self.signature} to {sig}; a jitted function needs the same shapes, dtypes and devices each call")
    for priv, t in zip(self.private, ins): priv.copy_from_peer(t.lazydata.buffer)
    for h in self.host_steps: h()
    for f in self.replay: f()
    return self.out

  def _plan(self, rec: _Recorder, in_bufs: list):
    """Turn the recorded launches into replay calls over planned memory (see the module docstring)."""
    self.private = [Buffer(b.device, b.size, b.dtype) for b in in_bufs]
    keep = {uid: r() for uid, r in rec.refs.items() if r() is not None}   # held outside the step: state, outputs, arguments
    for b, p in zip(in_bufs, self.private): keep[b.uid] = p
    arena = _assign_arena(rec.table, rec.meta, keep)
    calls = [(prog, [keep.get(u) or arena[u] for u in uids]) for prog, uids in rec.table]
    blocks = list({id(b.block): b.block for b in arena.values()}.values())
    self.buffers = list(keep.values()) + blocks
    self.arena_bytes = sum(b.nbytes for b in blocks)                                      # what replays need
    self.intermediate_bytes = sum(rec.meta[u][1] for u in rec.refs if u not in keep)   # without the plan
    self.launches = [prog for prog, _ in calls]   # what each replayed launch runs (profiling)
    self.replay = _batch(calls)


class _Recorder:
  """Receives the launches of the recorded call (realize.capturing). It holds buffers weakly, so that
  intermediates are freed during the recording as in any call; what is still alive afterwards is state."""
  def __init__(self): self.table, self.meta, self.refs, self.host_steps = [], {}, {}, []

  def append(self, entry):
    if entry[0] == "copy": prog, bufs = ("copy", entry[1].nbytes), [entry[1], entry[2]]
    elif entry[0] == "collective": prog, bufs = ("collective", entry[1]), entry[2]
    else: prog, bufs = entry
    for b in bufs:
      if b.uid not in self.refs: self.meta[b.uid], self.refs[b.uid] = (b.device, b.nbytes), weakref.ref(b)
    self.table.append((prog, [b.uid for b in bufs]))


ALIGN = 512   # bytes: where each intermediate starts in its arena (TMA and 16-byte vector loads need 16; 512 keeps rows of cache lines apart)


class ArenaSlice:
  """Bytes [offset, offset + nbytes) of an arena block, used where a recorded intermediate was."""
  __slots__ = ("block", "offset", "nbytes", "device", "runtime", "handle")
  def __init__(self, block, offset: int, nbytes: int):
    self.block, self.offset, self.nbytes, self.device, self.runtime = block, offset, nbytes, block.device, block.runtime
    self.handle = block.runtime.view(block.handle, offset, nbytes)


def _assign_arena(table, meta, keep) -> dict:
  """Places for the intermediates: every recorded buffer nothing else holds gets a slice of one block per
  device, as an allocator would place it replaying the step (taken at its first launch, returned after its
  last; best fit among free ranges, neighbours merged), so the block is about the step's largest live set."""
  first, last = {}, {}
  for n, (_, ids) in enumerate(table):
    for i in ids:
      first.setdefault(i, n); last[i] = n
  ends = {}
  for i, n in last.items(): ends.setdefault(n, []).append(i)
  free, top, offset = {}, {}, {}   # device -> sorted [(start, size)]; device -> high-water mark; uid -> offset
  for n, (_, ids) in enumerate(table):
    for i in ids:
      if i in keep or i in offset: continue
      dev, nbytes = meta[i]
      need = -(-max(nbytes, 1) // ALIGN) * ALIGN
      ranges = free.setdefault(dev, [])
      fits = [(size, k) for k, (start, size) in enumerate(ranges) if size >= need]
      if fits:
        size, k = min(fits)
        start = ranges[k][0]
        if size > need: ranges[k] = (start + need, size - need)
        else: del ranges[k]
      else:   # grow the block (taking a free range that ends at the top)
        start = top.get(dev, 0)
        if ranges and ranges[-1][0] + ranges[-1][1] == start: start = ranges.pop()[0]
        top[dev] = start + need
      offset[i] = (start, need)
    for i in ends.get(n, ()):
      if i in keep or i not in offset: continue
      ranges = free[meta[i][0]]
      start, size = offset[i]
      k = bisect.bisect(ranges, (start, size))
      if k < len(ranges) and ranges[k][0] == start + size: size += ranges.pop(k)[1]           # merge with the next
      if k > 0 and ranges[k - 1][0] + ranges[k - 1][1] == start:                             # and the previous
        start, size = ranges[k - 1][0], ranges[k - 1][1] + size; del ranges[k - 1]; k -= 1
      ranges.insert(k, (start, size))
  blocks = {dev: Buffer(dev, size, dtypes.uint8) for dev, size in top.items()}
  return {i: ArenaSlice(blocks[meta[i][0]], start, meta[i][1]) for i, (start, _) in offset.items()}


def _batch(calls) -> list:
  """Zero-argument replay calls: device copies and collectives as they are; each run of kernel launches on one CUDA device
  as one captured graph; on other runtimes one bound call per launch."""
  out, run = [], []
  graphs = os.environ.get("TRAINER_CUDA_GRAPHS", "1") != "0"
  def flush():
    if len(run) > 1: out.append(run[0][0].rt.graph([p.bind(*[b.handle for b in bufs]) for p, bufs in run]))
    elif run: out.append(run[0][0].bind(*[b.handle for b in run[0][1]]))
    run.clear()
  for prog, bufs in calls:
    graphable = graphs and hasattr(getattr(prog, "rt", None), "graph")
    if run and (not graphable or run[0][0].rt is not prog.rt): flush()
    if isinstance(prog, tuple) and prog[0] == "collective":   # inputs then outputs, one of each per device
      out.append(functools.partial(prog[1].run, bufs[:len(bufs) // 2], bufs[len(bufs) // 2:]))
    elif isinstance(prog, tuple):   # ("copy", bytes): an arena block may be larger than the copy
      dst, src = bufs
      out.append(functools.partial(src.runtime.copy_peer, dst.runtime, dst.handle, src.handle, prog[1]))
    elif graphable: run.append((prog, bufs))
    else: out.append(prog.bind(*[b.handle for b in bufs]))
  flush()
  return out


def each_call(fn):
  """Run fn now and, if a jitted function is being recorded, again before each of its replays: for values a step
  reads that the host computes per call (an optimizer's step number and bias corrections, in double precision).
  fn writes them into realized tensors; it runs outside the recording, so none of its work is replayed."""
  rec, R.capturing = R.capturing, None
  try: fn()
  finally: R.capturing = rec
  if rec is not None: rec.host_steps.append(fn)


def jit(fn) -> JitFunction:
  return JitFunction(fn)
