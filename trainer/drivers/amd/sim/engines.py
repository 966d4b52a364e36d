"""The simulated GPU's engines: each reads the packets the driver wrote into its ring memory as
bytes, from the read pointer up to what the doorbell announced, executes them, and writes the read
pointer back. The AQL engine (the compute queue's command processor) runs kernel dispatches and
barrier-AND packets, decrements completion signals and fires their events; the SDMA engine runs
COPY_LINEAR, FENCE, TRAP, POLL_REGMEM, TIMESTAMP and NOP. Every memory access is checked against the
executing GPU's page table. A packet the engine cannot decode is a fault, never skipped."""
from __future__ import annotations
import ctypes, struct, time
from .. import aql, sdma
from ..elf import CodeObject, KD_BYTES, Descriptor
from ..signals import signal_t
from ..device import CODE_ALIGN
from . import runner

u16, u32, u64, i64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64


class SimFault(Exception):
  """va set: a memory fault at that address; va None: a queue error (reported as a hang)."""
  def __init__(self, gpu_id: int, va, msg: str):
    super().__init__(msg)
    self.gpu_id, self.va = gpu_id, va


class _Engine:
  def __init__(self, sim, gpu, args):
    self.sim, self.gpu = sim, gpu
    self.base, self.size = args.ring_base_address, args.ring_size
    self.rptr = u64.from_address(args.read_pointer_address)
    self.halted = None
    self.announced = 0
    self.doorbell_slot = 0

  def read(self, va: int, n: int, what: str) -> bytes:
    self.sim.check(self.gpu.gpu_id, va, n, what)
    return ctypes.string_at(va, n)

  def write(self, va: int, data: bytes, what: str):
    self.sim.check(self.gpu.gpu_id, va, len(data), what)
    ctypes.memmove(va, data, len(data))

  def fault(self, msg: str): raise SimFault(self.gpu.gpu_id, None, f"{type(self).__name__} on gpu_id {self.gpu.gpu_id}: {msg}")

  def signal_done(self, sig: int):
    """Decrement an amd_signal_t and, if it has a mailbox, write its event id there and interrupt."""
    raw = self.read(sig, ctypes.sizeof(signal_t), "a completion signal")
    s = signal_t.from_buffer_copy(raw)
    i64.from_address(sig + signal_t.value.offset).value = s.value - 1
    if s.event_mailbox_ptr:
      self.write(s.event_mailbox_ptr, struct.pack("<Q", s.event_id), "an event mailbox")
      self.sim.fire(s.event_id)


class AqlEngine(_Engine):
  """Doorbell value: the index of the last packet written; pointers are packet indices."""
  def __init__(self, sim, gpu, args):
    super().__init__(sim, gpu, args)
    self.packets = self.size // aql.PACKET_BYTES
    self.announced = -1
    self.codes = {}   # descriptor address -> (descriptor, metadata, host build)

  def ring(self, value: int):
    if value + 1 - self.rptr.value > self.packets:
      self.fault(f"ring overflow: packet {value} announced while packet {self.rptr.value} is unread ({self.packets} slots)")
    self.announced = max(self.announced, value)

  def idle(self) -> bool: return self.rptr.value > self.announced
  def describe(self): return self.gpu.gpu_id, f"compute queue of gpu_id {self.gpu.gpu_id} stuck at packet {self.rptr.value}"

  def run(self) -> bool:
    moved = False
    while self.rptr.value <= self.announced:
      slot = self.base + (self.rptr.value % self.packets) * aql.PACKET_BYTES
      raw = self.read(slot, aql.PACKET_BYTES, "the AQL ring")
      kind = raw[0]
      if kind == aql.TYPE_INVALID: break      # announced but not yet published
      if kind == aql.TYPE_KERNEL_DISPATCH:
        p = aql.dispatch_packet_t.from_buffer_copy(raw)
        self.dispatch(p)
      elif kind == aql.TYPE_BARRIER_AND:
        p = aql.barrier_and_packet_t.from_buffer_copy(raw)
        if any(d and i64.from_buffer_copy(self.read(d + signal_t.value.offset, 8, "a barrier's signal")).value != 0 for d in p.dep_signal): break
      else: self.fault(f"packet type {kind} at index {self.rptr.value} is not a dispatch or a barrier-AND")
      if p.completion_signal: self.signal_done(p.completion_signal)
      u16.from_address(slot).value = aql.TYPE_INVALID
      self.rptr.value += 1
      moved = True
    return moved

  def dispatch(self, p):
    gid = self.gpu.gpu_id
    kd_va = p.kernel_object
    if kd_va not in self.codes: self.codes[kd_va] = self._program(kd_va)
    kd, meta, fn = self.codes[kd_va]
    block = (p.workgroup_size_x, p.workgroup_size_y, p.workgroup_size_z)
    if block[1] != 1 or block[2] != 1: self.fault("work-groups of more than one dimension are not simulated")
    groups = tuple(-(-g // b) for g, b in zip((p.grid_size_x, p.grid_size_y, p.grid_size_z), block))
    if p.grid_size_x % block[0]: self.fault("a partial work-group is not simulated")
    if p.group_segment_size < kd.group_segment_fixed_size or p.group_segment_size > self.gpu.lds_bytes:
      self.fault(f"{meta['.name']}: {p.group_segment_size} bytes of LDS (kernel needs {kd.group_segment_fixed_size}, the GPU has {self.gpu.lds_bytes})")
    if block[0] > meta.get(".max_flat_workgroup_size", 1024): self.fault(f"{meta['.name']}: work-group of {block[0]}")
    ka = self.read(p.kernarg_address, meta[".kernarg_segment_size"], "the kernel arguments")
    for a in meta.get(".args", []):
      if a[".value_kind"] == "global_buffer":
        ptr, = struct.unpack_from("<Q", ka, a[".offset"])
        if ptr: self.sim.check(gid, ptr, 1, f"{meta['.name']}'s buffer argument at kernarg offset {a['.offset']}")
    err = runner.run(fn, p.kernarg_address, groups, block[0])
    if err: self.fault(f"{meta['.name']}: {err}")
    self.sim.stats["dispatches"] += 1

  def _program(self, kd_va: int):
    """The kernel whose descriptor is at kd_va: the code object file at the start of its buffer (the
    loader's layout, device.Gpu.load), its metadata and the host build of the source it carries."""
    gid = self.gpu.gpu_id
    kd = Descriptor.parse(self.read(kd_va, KD_BYTES, "a kernel descriptor"))
    self.sim.check(gid, kd_va + kd.kernel_code_entry_byte_offset, 4, "the kernel's code")
    bo = self.sim.bo_at(kd_va)
    head = ctypes.string_at(bo.va, 64)
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum = struct.unpack_from("<HH", head, 58)
    co = CodeObject(ctypes.string_at(bo.va, shoff + shentsize * shnum))
    base = bo.va + -(-len(co.image) // CODE_ALIGN) * CODE_ALIGN
    k = next((k for k in co.kernels.values() if base + k.kd_offset == kd_va), None)
    if k is None: self.fault(f"no kernel of the code object at {bo.va:#x} has its descriptor at {kd_va:#x}")
    if not co.target.endswith(self.gpu.kind) and f"{self.gpu.kind}:" not in co.target: self.fault(f"a {co.target} code object on a {self.gpu.kind}")
    if k.meta.get(".wavefront_size") != self.gpu.wave or kd.wave_size != self.gpu.wave:
      self.fault(f"{k.name}: built for wave {kd.wave_size}, the GPU runs wave {self.gpu.wave}")
    src = co.source()
    if src is None: self.fault(f"{k.name}: the code object carries no source (the simulator runs kernels from their source)")
    return kd, k.meta, runner.build(src, [c.meta for c in co.kernels.values()], self.gpu.wave)[k.name]


class SdmaEngine(_Engine):
  """Doorbell value and pointers: bytes."""
  def ring(self, value: int):
    if value - self.rptr.value > self.size: self.fault(f"ring overflow: write pointer {value} while {self.rptr.value} is unread ({self.size} bytes)")
    self.announced = max(self.announced, value)

  def idle(self) -> bool: return self.rptr.value >= self.announced
  def describe(self): return self.gpu.gpu_id, f"SDMA queue of gpu_id {self.gpu.gpu_id} stuck at byte {self.rptr.value}"

  def run(self) -> bool:
    moved = False
    while self.rptr.value < self.announced:
      pos = self.rptr.value % self.size
      dw0, = struct.unpack("<I", self.read(self.base + pos, 4, "the SDMA ring"))
      op, sub = dw0 & 0xFF, (dw0 >> 8) & 0xFF
      n = {sdma.OP_COPY: 28, sdma.OP_FENCE: 16, sdma.OP_TRAP: 8, sdma.OP_POLL_REGMEM: 24, sdma.OP_TIMESTAMP: 12}.get(op)
      if op == sdma.OP_NOP: n = 4 * (1 + ((dw0 >> 16) & 0x3FFF))
      if n is None: self.fault(f"SDMA opcode {op} (dword {dw0:#010x}) at byte {self.rptr.value} is not one the driver uses")
      if pos + n > self.size: self.fault(f"a packet of {n} bytes straddles the ring end at byte {pos}")
      d = struct.unpack(f"<{n // 4}I", self.read(self.base + pos, n, "the SDMA ring"))
      if op == sdma.OP_COPY:
        if sub != sdma.SUBOP_COPY_LINEAR: self.fault(f"COPY sub-op {sub} is not linear")
        nbytes, src, dst = (d[1] & (sdma.COPY_MAX_BYTES - 1)) + 1, d[3] | d[4] << 32, d[5] | d[6] << 32
        self.sim.check(self.gpu.gpu_id, src, nbytes, "an SDMA copy's source")
        self.sim.check(self.gpu.gpu_id, dst, nbytes, "an SDMA copy's destination")
        ctypes.memmove(dst, src, nbytes)
        self.sim.stats["sdma_bytes"] += nbytes
      elif op == sdma.OP_FENCE: self.write(d[1] | d[2] << 32, struct.pack("<I", d[3]), "an SDMA fence")
      elif op == sdma.OP_TRAP: self.sim.fire(d[1] & sdma.TRAP_CONTEXT_MASK)
      elif op == sdma.OP_POLL_REGMEM:
        func, addr = (dw0 >> 28) & 7, d[1] | d[2] << 32
        if func != sdma.POLL_FUNC_EQUAL or not dw0 >> 31: self.fault(f"POLL_REGMEM function {func} on registers")
        v, = struct.unpack("<I", self.read(addr, 4, "a POLL_REGMEM address"))
        if v & d[4] != d[3]: break            # not yet: stay on this packet
      elif op == sdma.OP_TIMESTAMP: self.write(d[1] | d[2] << 32, struct.pack("<Q", time.monotonic_ns()), "an SDMA timestamp")
      self.rptr.value += n
      moved = True
    return moved
