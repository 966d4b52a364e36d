"""The AMD runtime: devices `AMD:N` on our own driver (trainer/drivers/amd) over the Linux KFD
interface; with TRAINER_AMD_SIM=<kinds> (e.g. 'gfx942,gfx942') on the simulated GPU instead.

Each device has a compute (AQL) queue and an SDMA queue. The compute queue is the device's stream:
kernels run on it in order. Copies run on the SDMA queue ordered against it by signals: a copy waits
for a marker of the compute work queued before it (on both devices of a peer copy), and later
kernels wait for the copy's signal. Host memory goes through a CPU-visible staging buffer; a buffer
of another AMD device is mapped into this GPU's page table on its first use (peer access). Freed
buffers are kept for reuse by size. Kernels are rendered by codegen/amd.py, compiled by clang to code
objects for the device's target and loaded by the driver. The collectives' events are signals.

Launches are held back until the next operation that needs the queues (a copy, a marker, a wait): then
the kernels not compiled yet are compiled together, as one source and one code object (a compiler run
costs ~50 ms before it compiles anything, ~10 ms per small kernel after), and the launches are queued
in their order."""
from __future__ import annotations
import bisect, ctypes, hashlib
import numpy as np
from ..device import Runtime, OutOfMemoryError, register
from ...drivers.amd import device as driver
from ...drivers.amd import compiler
from ...drivers.amd.kfd import AmdError, OutOfDeviceMemory

STAGING_BYTES = 8 << 20   # the host staging buffer, per device: copies of more go in pieces
POOL_BYTES = 8 << 30      # freed device memory kept for reuse, per device


class Program:
  """A rendered kernel; `prog` (the loaded code) is set when the batch it is compiled in is built."""
  __slots__ = ("rt", "r", "prog", "name", "groups", "block")
  def __init__(self, rt, r):
    self.rt, self.r, self.prog, self.name, self.groups, self.block = rt, r, None, r.name, r.groups, (r.block, 1, 1)
  def __call__(self, *handles): self.rt.pending.append((self, [int(h) for h in handles] + list(self.r.args)))
  def bind(self, *handles):
    """A zero-argument launch with the buffer addresses fixed (the JIT's replay unit)."""
    entry, pending = (self, [int(h) for h in handles] + list(self.r.args)), self.rt.pending
    return lambda: pending.append(entry)


class AMDRuntime(Runtime):
  def __init__(self, name: str, index: int):
    self.name, self.index = name, index
    self.gpu = driver.process().device(index)
    self.target, self.device_name = self.gpu.gpu.target, self.gpu.gpu.name
    self.staging = self.gpu.alloc(STAGING_BYTES, host=True)
    self.bos, self.starts, self.pool, self.pooled, self.sizes = {}, [], {}, 0, {}
    self.modules, self._accumulators = {}, {}
    self.pending, self.unbuilt = [], []   # launches held back (Program, args); Programs not compiled yet
    self.kernels = {}                     # kernel name -> its loaded code (a name is unique to its source)

  # -- memory
  def alloc(self, nbytes: int) -> int:
    nbytes = max(int(nbytes), 1)
    free = self.pool.get(nbytes)
    if free:
      self.pooled -= nbytes
      h = free.pop()
    else:
      try: bo = self.gpu.alloc(nbytes)
      except OutOfDeviceMemory:
        if not self.pooled: raise OutOfMemoryError(self.name, nbytes, self.in_use) from None
        self._drain_pool()   # buffers parked in the pool go back, then once more
        try: bo = self.gpu.alloc(nbytes)
        except OutOfDeviceMemory: raise OutOfMemoryError(self.name, nbytes, self.in_use) from None
      h = bo.va
      self.bos[h] = bo
      bisect.insort(self.starts, h)
    self.sizes[h] = nbytes
    return h

  def free(self, handle):
    size = self.sizes.pop(handle, None)
    if size is None: return
    self.pool.setdefault(size, []).append(handle); self.pooled += size
    if self.pooled > POOL_BYTES: self._drain_pool()

  def _drain_pool(self):
    """Give the pooled buffers back to KFD (after the queued work that may still use them)."""
    self.synchronize()
    for handles in self.pool.values():
      for h in handles:
        self.starts.remove(h)
        self.gpu.memory.free(self.bos.pop(h))
    self.pool, self.pooled = {}, 0

  def bo_of(self, addr: int):
    i = bisect.bisect(self.starts, addr) - 1
    bo = self.bos[self.starts[i]] if i >= 0 else None
    if bo is None or not bo.va <= addr < bo.va + bo.size: raise AmdError(f"{self.name}: {addr:#x} is not in a buffer of this device")
    return bo

  def view(self, handle, offset: int, nbytes: int): return int(handle) + offset

  # -- copies: on the SDMA queue, ordered against the compute queues by signals
  def _copy(self, dst: int, src: int, nbytes: int, others=(), host_wait=False):
    """Copy on this device's SDMA queue after the compute work queued so far here and on `others`
    (runtimes whose memory it touches), before any compute work queued later on all of them."""
    sig = self.gpu.signals
    rts = [self, *[o for o in others if o is not self]]
    for rt in rts: rt.flush()
    before = [rt.gpu.mark_compute(interrupt=False) for rt in rts]   # only the SDMA queue waits for these
    for b in before: self.gpu.copies.wait(b)
    self.gpu.copies.copy(dst, src, nbytes)
    done = self.gpu.mark_copies()
    for rt in rts: rt.gpu.compute.barrier([done])
    if host_wait: sig.wait(done, f"a copy of {nbytes} bytes on {self.name}")
    for s in before + [done]: sig.release(s)

  def _peer(self, src_rt: AMDRuntime, addr: int):
    """Map the buffer holding addr (on src_rt) into this GPU's page table."""
    if src_rt is not self: self.gpu.memory.map(src_rt.bo_of(addr), [self.gpu.gpu.gpu_id])

  def copyin(self, handle, data: np.ndarray):
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    for off in range(0, raw.nbytes, STAGING_BYTES):
      n = min(STAGING_BYTES, raw.nbytes - off)
      ctypes.memmove(self.staging.va, raw.ctypes.data + off, n)
      self._copy(int(handle) + off, self.staging.va, n, host_wait=True)

  def copyout(self, handle, nbytes: int) -> np.ndarray:
    out = np.empty(max(nbytes, 1), np.uint8)
    for off in range(0, nbytes, STAGING_BYTES):
      n = min(STAGING_BYTES, nbytes - off)
      self._copy(self.staging.va, int(handle) + off, n, host_wait=True)
      ctypes.memmove(out.ctypes.data + off, self.staging.va, n)
    return out[:nbytes]

  def copy_peer(self, dst_rt, dst, src, nbytes: int):
    if nbytes == 0: return
    if isinstance(dst_rt, AMDRuntime):   # on the destination's SDMA queue, the source mapped there
      dst_rt._peer(self, int(src))
      dst_rt._copy(int(dst), int(src), nbytes, others=[self])
    elif isinstance(dst, np.ndarray): dst[:nbytes] = self.copyout(src, nbytes)
    else: dst_rt.copyin(dst, self.copyout(src, nbytes))

  def synchronize(self):
    self.flush()
    m = self.gpu.mark_compute()
    self.gpu.signals.wait(m, f"the work queued on {self.name}")
    self.gpu.signals.release(m)
    self.gpu.drain()

  # -- what the collectives build on: SDMA copies into this device, signals as events
  def mark(self):
    self.flush()
    return self.gpu.mark_compute()

  def wait(self, events):
    self.flush()
    self.gpu.compute.barrier([e for e in events if e is not None])
  def release(self, events):
    for e in events:
      if e is not None: self.gpu.signals.release(e)

  def copy_async(self, src_rt, dst, src, nbytes: int, after=()):
    if not isinstance(src_rt, AMDRuntime): return super().copy_async(src_rt, dst, src, nbytes, after)
    self.flush(); src_rt.flush()
    q = self.gpu.copies
    for e in after:
      if e is not None: q.wait(e)
    if nbytes:
      self._peer(src_rt, int(src))
      q.copy(int(dst), int(src), nbytes)
    return self.gpu.mark_copies()

  def accumulate(self, dst, src, n: int, dtype, op: str, scale: float | None = None):
    key = (dtype, op, scale)
    if key not in self._accumulators:
      from ..codegen.amd import render_accumulate
      self._accumulators[key] = self._program(render_accumulate(dtype, op, scale))
    if n:
      p = self._accumulators[key]
      groups = min(1024, -(-n // p.block[0]))
      self.pending.append((_Sized(p, (groups, 1, 1)), [int(dst), int(src), n, groups * p.block[0]]))

  # -- kernels
  def _program(self, r) -> Program:
    p = Program(self, r)
    if r.name in self.kernels: p.prog = self.kernels[r.name]
    else: self.unbuilt.append(p)
    return p

  def compile(self, kernel, name: str) -> Program:
    from ..codegen import amd as amd_codegen
    return self._program(amd_codegen.render(kernel, self.target))   # named by its text, not by `name`

  def flush(self):
    """Compile what is not compiled yet (one code object), then queue the held-back launches."""
    if self.unbuilt:
      from ..codegen.amd import source
      progs, self.unbuilt = self.unbuilt, []
      new = list({p.name: p.r for p in progs if p.name not in self.kernels}.values())   # one of each name
      if new:
        image = compiler.compile_source(source(new), self.target, ", ".join(r.name for r in new))
        key = hashlib.sha256(image).hexdigest()
        if key not in self.modules: self.modules[key] = self.gpu.load(image)
        self.kernels.update(self.modules[key])
      for p in progs: p.prog = self.kernels[p.name]
    pending = list(self.pending)
    self.pending.clear()   # in place: bound launches (`Program.bind`) hold this list
    for p, args in pending: self.gpu.launch(p.prog, args, p.groups, p.block)


class _Sized:
  """A program launched with its own number of work-groups."""
  __slots__ = ("program", "groups")
  def __init__(self, program, groups): self.program, self.groups = program, groups
  prog = property(lambda self: self.program.prog)
  block = property(lambda self: self.program.block)


def amd_device_count() -> int:
  """How many AMD GPUs KFD (or the simulator) presents; 0, never an error, without them."""
  try: return len(driver.process().gpus)
  except (AmdError, OSError): return 0


register("AMD", AMDRuntime, amd_device_count)
