"""An AQL compute queue (KFD queue type COMPUTE_AQL): a ring of 64-byte HSA packets in host memory,
the `amd_queue_t` whose write/read dispatch ids the command processor reads and writes, and the
doorbell. Packets: kernel dispatch (hsa_kernel_dispatch_packet_t) and barrier-AND (waits until up to
five signals reach 0). Every packet sets the barrier bit, so the queue runs in order like a stream.
Layouts are those of hsa/hsa.h and hsa/amd_hsa_queue.h (tests/drivers checks them)."""
from __future__ import annotations
import ctypes
from . import kfd
from .hsa import (u16, u32, amd_queue_t, dispatch_packet_t, barrier_and_packet_t, PACKET_BYTES, TYPE_INVALID,
                  TYPE_KERNEL_DISPATCH, TYPE_BARRIER_AND, HEADER_FENCES, BARRIER_DEPS, QUEUE_TYPE_MULTI, QUEUE_PROPERTIES_IS_PTR64)


RING_PACKETS = 1024                       # 64 KiB ring
KERNARG_SLOT = 4096                       # bytes of kernel arguments per ring slot (reused with the slot; 4 MiB in all)
EOP_BYTES = 4096                          # the CP's end-of-pipe buffer
# context save area (CWSR) per XCC, as the firmware needs it: a control stack of 8 (gfx9) or 12 (gfx10+)
# bytes per wave slot plus a header, then per CU the registers (VGPR+AGPR, SGPR), LDS and hardware state
WAVES_PER_CU = {9: 40, 10: 32, 11: 32}
CTL_BYTES_PER_WAVE = {9: 8, 10: 12, 11: 12}
CTL_HEADER_BYTES = 8 + 40                 # control stack header + kfd_context_save_area_header
SAVE_BYTES_PER_CU = {9: 0x80000 + 0x4000 + 0x1000, 10: 0x60000 + 0x4000 + 0x1000, 11: 0x60000 + 0x4000 + 0x1000}


def cwsr_sizes(gpu) -> tuple[int, int]:
  """(control stack bytes, whole save area bytes over all XCCs) for a topology.Gpu."""
  major = gpu.gc_version[0]
  cus = gpu.cu_count // gpu.xcc_count
  ctl = -(-(cus * WAVES_PER_CU[major] * CTL_BYTES_PER_WAVE[major] + CTL_HEADER_BYTES) // 4096) * 4096
  per_xcc = ctl + cus * (SAVE_BYTES_PER_CU[major] + gpu.lds_bytes)
  return ctl, -(-per_xcc // 4096) * 4096 * gpu.xcc_count


class AqlQueue:
  def __init__(self, dev):
    self.dev, os_, mem, g = dev, dev.os, dev.memory, dev.gpu
    host = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
    self.ring = mem.alloc(RING_PACKETS * PACKET_BYTES, g.gpu_id, host | kfd.MEM_AQL_QUEUE_MEM, cpu=True)
    self.kernargs = mem.alloc(RING_PACKETS * KERNARG_SLOT, g.gpu_id, host, cpu=True)
    self.ctl = mem.alloc(ctypes.sizeof(amd_queue_t), g.gpu_id, host, cpu=True)
    self.eop = mem.alloc(EOP_BYTES, g.gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE)
    ctl_stack, cwsr = cwsr_sizes(g)
    self.cwsr = mem.alloc(cwsr, g.gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE)
    for i in range(RING_PACKETS): u16.from_address(self.ring.va + i * PACKET_BYTES).value = TYPE_INVALID
    self.q = amd_queue_t.from_address(self.ctl.va)
    self.q.hsa_queue.type, self.q.hsa_queue.base_address, self.q.hsa_queue.size = QUEUE_TYPE_MULTI, self.ring.va, RING_PACKETS
    self.q.read_dispatch_id_field_base_byte_offset = amd_queue_t.read_dispatch_id.offset
    self.q.queue_properties = QUEUE_PROPERTIES_IS_PTR64
    a = kfd.create_queue_args(ring_base_address=self.ring.va, ring_size=self.ring.size, gpu_id=g.gpu_id,
                              queue_type=kfd.QUEUE_COMPUTE_AQL, queue_percentage=kfd.MAX_QUEUE_PERCENTAGE,
                              queue_priority=kfd.NORMAL_QUEUE_PRIORITY,
                              write_pointer_address=self.ctl.va + amd_queue_t.write_dispatch_id.offset,
                              read_pointer_address=self.ctl.va + amd_queue_t.read_dispatch_id.offset,
                              eop_buffer_address=self.eop.va, eop_buffer_size=EOP_BYTES,
                              ctx_save_restore_address=self.cwsr.va, ctx_save_restore_size=cwsr, ctl_stack_size=ctl_stack)
    os_.ioctl(dev.kfd_fd, kfd.CREATE_QUEUE, a)
    self.queue_id, self.doorbell = a.queue_id, dev.doorbell(a.doorbell_offset)
    self.last = None    # signal of the newest marker

  def _slot(self) -> int:
    """The next packet index, once the ring has room for it."""
    q = self.q
    if q.write_dispatch_id - q.read_dispatch_id >= RING_PACKETS:
      self.dev.signals.wait_until(lambda: q.write_dispatch_id - q.read_dispatch_id < RING_PACKETS, "room in the compute ring")
    return q.write_dispatch_id

  def _publish(self, idx: int, packet, header: int, setup: int = 0):
    """Write the packet body, then header and setup in one 32-bit store, then the write id and the doorbell."""
    addr = self.ring.va + (idx % RING_PACKETS) * PACKET_BYTES
    ctypes.memmove(addr + 4, ctypes.addressof(packet) + 4, PACKET_BYTES - 4)
    u32.from_address(addr).value = header | (setup << 16)
    self.q.write_dispatch_id = idx + 1
    self.dev.os.doorbell(self.doorbell, idx)

  def dispatch(self, kd_va: int, kernarg: bytes, groups: tuple, block: tuple, group_bytes: int, private_bytes: int):
    idx = self._slot()
    if len(kernarg) > KERNARG_SLOT: raise kfd.AmdError(f"{len(kernarg)} bytes of kernel arguments (the slot holds {KERNARG_SLOT})")
    ka = self.kernargs.va + (idx % RING_PACKETS) * KERNARG_SLOT
    ctypes.memmove(ka, kernarg, len(kernarg))
    p = dispatch_packet_t(workgroup_size_x=block[0], workgroup_size_y=block[1], workgroup_size_z=block[2],
                          grid_size_x=groups[0] * block[0], grid_size_y=groups[1] * block[1], grid_size_z=groups[2] * block[2],
                          private_segment_size=private_bytes, group_segment_size=group_bytes, kernel_object=kd_va,
                          kernarg_address=ka)
    self._publish(idx, p, HEADER_FENCES | TYPE_KERNEL_DISPATCH, setup=3)

  def barrier(self, deps=(), signal: int = 0):
    """A barrier-AND packet: later packets wait for `deps` (signals) and everything before; `signal`
    completes when it has."""
    deps = list(deps)
    while len(deps) > BARRIER_DEPS:
      self.barrier(deps[:BARRIER_DEPS]); deps = deps[BARRIER_DEPS:]
    idx = self._slot()
    p = barrier_and_packet_t(completion_signal=signal)
    for i, d in enumerate(deps): p.dep_signal[i] = d
    self._publish(idx, p, HEADER_FENCES | TYPE_BARRIER_AND)

  def idle(self) -> bool: return self.q.read_dispatch_id >= self.q.write_dispatch_id
