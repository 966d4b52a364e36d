"""The simulated GPU's engines: each reads the packets the driver wrote into its ring memory as
bytes, from the read pointer up to what the doorbell announced, and executes them. The AQL engine
(the compute queue's command processor) runs kernel dispatches and barrier-AND packets, decrements
completion signals and raises their interrupts; the SDMA engine runs COPY_LINEAR, FENCE, TRAP,
POLL_REGMEM, TIMESTAMP and NOP. Every access goes through the executing GPU's page table with the
permission it needs: packets are fetched with execute permission (the command processor's fetches
need it: ROCm's CLR allocates rings executable for that reason), signals and copies write.

Two modes. In order (`step` finishes each packet before the next, the read pointer moving after
it) or asynchronous, as the hardware is: the command processor moves its read index when it
launches a dispatch, the kernel finishes some ticks later (reading its arguments then, while it
runs), and a packet with the barrier bit waits for the ones before it; the SDMA engine moves its read
pointer when it fetches a packet into its pipeline and executes it later. Delays come from the
simulator's seeded random generator. A packet the engine cannot decode is a fault, never skipped."""
from __future__ import annotations
import ctypes, struct, time
from .. import hsa
from .. import sdma_packets as sp
from ..elf import CodeObject, KD_BYTES, Descriptor, CODE_ALIGN
from . import runner
from .memory import CpuWindow

u64, i64 = ctypes.c_uint64, ctypes.c_int64
MAX_DELAY = 6          # ticks a launched kernel or a fetched SDMA packet may take before it is done
SDMA_PIPELINE = 4      # SDMA packets fetched ahead of the one executing


class QueueError(Exception):
  """A queue the engine cannot go on with (reported as a hang)."""
  def __init__(self, gpu_id: int, msg: str):
    super().__init__(msg)
    self.gpu_id = gpu_id


class _Engine:
  def __init__(self, sim, gpu, args):
    self.sim, self.gpu, self.table = sim, gpu, gpu.table
    self.base, self.size = args.ring_base_address, args.ring_size
    self.rptr = u64.from_address(self.table.access(args.read_pointer_address, 8, "the read pointer", write=True))
    self.halted = None
    self.announced = 0
    self.doorbell_slot = 0

  def read(self, va: int, n: int, what: str, execute: bool = False) -> bytes:
    return ctypes.string_at(self.table.access(va, n, what, execute=execute), n)

  def write(self, va: int, data: bytes, what: str):
    ctypes.memmove(self.table.access(va, len(data), what, write=True), data, len(data))

  def fault(self, msg: str): raise QueueError(self.gpu.gpu_id, f"{type(self).__name__} on gpu_id {self.gpu.gpu_id}: {msg}")

  def delay(self) -> int: return self.sim.rng.randint(0, MAX_DELAY) if self.sim.asynchronous else 0


class AqlEngine(_Engine):
  """Doorbell value: the index of the last packet written; pointers are packet indices."""
  def __init__(self, sim, gpu, args):
    super().__init__(sim, gpu, args)
    self.packets = self.size // hsa.PACKET_BYTES
    self.announced = -1
    self.codes = {}          # descriptor address -> (descriptor, metadata, host build)
    self.running = None      # [dispatch packet, ticks left]: launched, not finished

  def ring(self, value: int):
    if value + 1 - self.rptr.value > self.packets:
      self.fault(f"ring overflow: packet {value} announced while packet {self.rptr.value} is unread ({self.packets} slots)")
    self.announced = max(self.announced, value)

  def idle(self) -> bool: return self.running is None and self.rptr.value > self.announced
  def describe(self): return self.gpu.gpu_id, f"compute queue of gpu_id {self.gpu.gpu_id} stuck at packet {self.rptr.value}"

  def step(self) -> bool:
    """One unit of work (finish or age the running kernel, or take the next packet); whether anything moved."""
    if self.running is not None:
      if self.running[1] > 0:
        self.running[1] -= 1
        return True
      p, self.running = self.running[0], None
      self.execute(p)
      if p.completion_signal: self.signal_done(p.completion_signal)
      return True
    if self.rptr.value > self.announced: return False
    slot = self.base + (self.rptr.value % self.packets) * hsa.PACKET_BYTES
    raw = self.read(slot, hsa.PACKET_BYTES, "the AQL ring", execute=True)
    kind = raw[0]
    if kind == hsa.TYPE_INVALID: return False       # announced but not yet published
    if kind == hsa.TYPE_KERNEL_DISPATCH:
      p = hsa.dispatch_packet_t.from_buffer_copy(raw)
      self.program(p.kernel_object)                 # the descriptor and code are fetched at launch
      if self.sim.asynchronous: self.running = [p, self.delay()]
      else:
        self.execute(p)
        if p.completion_signal: self.signal_done(p.completion_signal)
    elif kind == hsa.TYPE_BARRIER_AND:
      p = hsa.barrier_and_packet_t.from_buffer_copy(raw)
      if any(d and i64.from_buffer_copy(self.read(d + hsa.signal_t.value.offset, 8, "a barrier's signal")).value != 0 for d in p.dep_signal):
        return False
      if p.completion_signal: self.signal_done(p.completion_signal)
    else: self.fault(f"packet type {kind} at index {self.rptr.value} is not a dispatch or a barrier-AND")
    self.write(slot, struct.pack("<H", hsa.TYPE_INVALID), "the AQL ring")
    self.rptr.value += 1
    return True

  def signal_done(self, sig: int):
    """Decrement an amd_signal_t; with a mailbox, write its event id there and interrupt with it (32 bits)."""
    s = hsa.signal_t.from_buffer_copy(self.read(sig, ctypes.sizeof(hsa.signal_t), "a completion signal"))
    self.write(sig + hsa.signal_t.value.offset, struct.pack("<q", s.value - 1), "a completion signal")
    if s.event_mailbox_ptr:
      self.write(s.event_mailbox_ptr, struct.pack("<Q", s.event_id), "an event mailbox")
      self.sim.interrupt(s.event_id, 32)

  def execute(self, p):
    """Run a dispatch's work-groups; its kernel arguments are read now."""
    gid = self.gpu.gpu_id
    kd, meta, fn = self.program(p.kernel_object)
    block = (p.workgroup_size_x, p.workgroup_size_y, p.workgroup_size_z)
    if block[1] != 1 or block[2] != 1: self.fault("work-groups of more than one dimension are not simulated")
    groups = tuple(-(-g // b) for g, b in zip((p.grid_size_x, p.grid_size_y, p.grid_size_z), block))
    if p.grid_size_x % block[0]: self.fault("a partial work-group is not simulated")
    if p.group_segment_size < kd.group_segment_fixed_size or p.group_segment_size > self.gpu.lds_bytes:
      self.fault(f"{meta['.name']}: {p.group_segment_size} bytes of LDS (kernel needs {kd.group_segment_fixed_size}, the GPU has {self.gpu.lds_bytes})")
    if block[0] > meta.get(".max_flat_workgroup_size", 1024): self.fault(f"{meta['.name']}: work-group of {block[0]}")
    ka = self.read(p.kernarg_address, meta[".kernarg_segment_size"], "the kernel arguments")
    bos = []
    for a in meta.get(".args", []):
      if a[".value_kind"] == "global_buffer":
        ptr, = struct.unpack_from("<Q", ka, a[".offset"])
        if ptr:
          self.table.access(ptr, 1, f"{meta['.name']}'s buffer argument at kernarg offset {a['.offset']}")
          bos.append(self.table.lookup(ptr)[2])
    with CpuWindow(bos): err = runner.run(fn, self.table.access(p.kernarg_address, 1, "the kernel arguments"), groups, block[0])
    if err: self.fault(f"{meta['.name']}: {err}")
    self.sim.stats["dispatches"] += 1

  def program(self, kd_va: int):
    """The kernel whose descriptor is at kd_va: the code object file at the start of its buffer (the
    loader's layout, elf.CODE_ALIGN), its metadata and the host build of the source it carries."""
    if kd_va in self.codes: return self.codes[kd_va]
    kd = Descriptor.parse(self.read(kd_va, KD_BYTES, "a kernel descriptor", execute=True))
    self.read(kd_va + kd.kernel_code_entry_byte_offset, 4, "the kernel's code", execute=True)
    _, _, bo, off = self.table.lookup(kd_va)
    head = ctypes.string_at(bo.alias, 64)
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum = struct.unpack_from("<HH", head, 58)
    co = CodeObject(ctypes.string_at(bo.alias, shoff + shentsize * shnum))
    base = bo.va + -(-len(co.image) // CODE_ALIGN) * CODE_ALIGN
    k = next((k for k in co.kernels.values() if base + k.kd_offset == kd_va), None)
    if k is None: self.fault(f"no kernel of the code object at {bo.va:#x} has its descriptor at {kd_va:#x}")
    if not co.target.endswith(self.gpu.kind) and f"{self.gpu.kind}:" not in co.target: self.fault(f"a {co.target} code object on a {self.gpu.kind}")
    if k.meta.get(".wavefront_size") != self.gpu.wave or kd.wave_size != self.gpu.wave:
      self.fault(f"{k.name}: built for wave {kd.wave_size}, the GPU runs wave {self.gpu.wave}")
    src = co.source()
    if src is None: self.fault(f"{k.name}: the code object carries no source (the simulator runs kernels from their source)")
    self.codes[kd_va] = kd, k.meta, runner.build(src, [c.meta for c in co.kernels.values()], self.gpu.wave)[k.name]
    return self.codes[kd_va]


class SdmaEngine(_Engine):
  """Doorbell value and pointers: bytes."""
  def __init__(self, sim, gpu, args):
    super().__init__(sim, gpu, args)
    self.pipeline = []      # [packet dwords, ticks left], fetched and not yet executed

  def ring(self, value: int):
    if value - self.rptr.value > self.size: self.fault(f"ring overflow: write pointer {value} while {self.rptr.value} is unread ({self.size} bytes)")
    self.announced = max(self.announced, value)

  def idle(self) -> bool: return not self.pipeline and self.rptr.value >= self.announced
  def describe(self): return self.gpu.gpu_id, f"SDMA queue of gpu_id {self.gpu.gpu_id} stuck at byte {self.rptr.value}"

  def step(self) -> bool:
    moved = False
    if self.pipeline:
      head = self.pipeline[0]
      if head[1] > 0: head[1] -= 1; moved = True
      elif self.execute(head[0]): self.pipeline.pop(0); moved = True
    if self.rptr.value < self.announced and (len(self.pipeline) < SDMA_PIPELINE if self.sim.asynchronous else not self.pipeline):
      self.pipeline.append([self.fetch(), self.delay()])
      moved = True
      if not self.sim.asynchronous and self.execute(self.pipeline[0][0]): self.pipeline.pop(0)
    return moved

  def fetch(self) -> tuple:
    """Decode the packet at the read pointer and move past it."""
    pos = self.rptr.value % self.size
    dw0, = struct.unpack("<I", self.read(self.base + pos, 4, "the SDMA ring", execute=True))
    op = dw0 & 0xFF
    n = {sp.OP_COPY: 28, sp.OP_FENCE: 16, sp.OP_TRAP: 8, sp.OP_POLL_REGMEM: 24, sp.OP_TIMESTAMP: 12}.get(op)
    if op == sp.OP_NOP: n = 4 * (1 + ((dw0 >> 16) & 0x3FFF))
    if n is None: self.fault(f"SDMA opcode {op} (dword {dw0:#010x}) at byte {self.rptr.value} is not one the driver uses")
    if pos + n > self.size: self.fault(f"a packet of {n} bytes straddles the ring end at byte {pos}")
    d = struct.unpack(f"<{n // 4}I", self.read(self.base + pos, n, "the SDMA ring", execute=True))
    self.rptr.value += n
    return d

  def execute(self, d: tuple) -> bool:
    """Run one packet; False while a POLL_REGMEM waits."""
    op, sub = d[0] & 0xFF, (d[0] >> 8) & 0xFF
    if op == sp.OP_COPY:
      if sub != sp.SUBOP_COPY_LINEAR: self.fault(f"COPY sub-op {sub} is not linear")
      count_bits = 30 if self.gpu.sdma_major >= 5 else 22     # COPY_LINEAR count width of each packet format
      nbytes, src, dst = (d[1] & ((1 << count_bits) - 1)) + 1, d[3] | d[4] << 32, d[5] | d[6] << 32
      s = self.table.access(src, nbytes, "an SDMA copy's source")
      t = self.table.access(dst, nbytes, "an SDMA copy's destination", write=True)
      ctypes.memmove(t, s, nbytes)
      self.sim.stats["sdma_bytes"] += nbytes
      self.sim.stats["sdma_copies"] += 1
    elif op == sp.OP_FENCE: self.write(d[1] | d[2] << 32, struct.pack("<I", d[3]), "an SDMA fence")
    elif op == sp.OP_TRAP: self.sim.interrupt(d[1] & sp.TRAP_CONTEXT_MASK, 28)
    elif op == sp.OP_POLL_REGMEM:
      func, addr = (d[0] >> 28) & 7, d[1] | d[2] << 32
      if func != sp.POLL_FUNC_EQUAL or not d[0] >> 31: self.fault(f"POLL_REGMEM function {func} on registers")
      v, = struct.unpack("<I", self.read(addr, 4, "a POLL_REGMEM address"))
      if v & d[4] != d[3]: return False
    elif op == sp.OP_TIMESTAMP: self.write(d[1] | d[2] << 32, struct.pack("<Q", time.monotonic_ns()), "an SDMA timestamp")
    return True

