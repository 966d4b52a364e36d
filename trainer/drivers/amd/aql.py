"""An AQL compute queue (KFD queue type COMPUTE_AQL): a ring of 64-byte HSA packets in host memory,
the `amd_queue_t` whose write/read dispatch ids the command processor reads and writes, and the
doorbell. Packets: kernel dispatch (hsa_kernel_dispatch_packet_t) and barrier-AND (waits until up to
five signals reach 0). Every packet sets the barrier bit, so the queue runs in order like a stream.
Layouts are in hsa.py (tests/drivers checks them against hsa/hsa.h and hsa/amd_hsa_queue.h).

Buffers as KFD checks them (kfd_queue_acquire_buffers; sizes from cwsr.py): the ring is a plain,
executable host buffer of exactly its size (the command processor fetches packets with execute
permission; AQL_QUEUE_MEM is GFX7/8's half-size double mapping and breaks the ring on gfx9+), the
amd_queue_t in a one-page buffer (it holds both dispatch ids), the context save area in host memory
as libhsakmt keeps it, its header per XCC filled as libhsakmt's fill_cwsr_header does.

The read dispatch id says a packet was launched, not that it finished: a dispatch's kernel arguments
stay in use while its kernel runs. The ring is cut into chunks; the last slot of each holds a barrier
whose signal completes when everything before it has, and the kernel-argument slots of a chunk (one
per ring slot) are written again only after that signal of the lap before."""
from __future__ import annotations
import ctypes
from . import kfd
from .cwsr import queue_sizes
from .queue_setup import create_queue, destroy_queue
from .hsa import (u16, u32, amd_queue_t, dispatch_packet_t, barrier_and_packet_t, save_area_header_t, PACKET_BYTES,
                  TYPE_INVALID, TYPE_KERNEL_DISPATCH, TYPE_BARRIER_AND, HEADER_FENCES, BARRIER_DEPS, QUEUE_TYPE_MULTI,
                  QUEUE_PROPERTIES_IS_PTR64)

RING_PACKETS = 1024                       # 64 KiB ring
CHUNK = 256                               # ring slots per completion marker (4 chunks a lap)
KERNARG_SLOT = 4096                       # bytes of kernel arguments per ring slot (4 MiB in all)
ERROR_REASON_OFFSET = 256                 # in the amd_queue_t's page: the u64 KFD writes a queue error's reason to
RING = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_EXECUTABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
HOST = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
SAVE_AREA = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_EXECUTABLE   # libhsakmt: executable host memory


class AqlQueue:
  def __init__(self, dev):
    self.dev, mem, g = dev, dev.memory, dev.gpu
    self.sizes = s = queue_sizes(g)
    with mem.transaction() as bos:
      bos.append(ring := mem.alloc(RING_PACKETS * PACKET_BYTES, g.gpu_id, RING, cpu=True))
      bos.append(kernargs := mem.alloc(RING_PACKETS * KERNARG_SLOT, g.gpu_id, HOST, cpu=True))
      bos.append(ctl := mem.alloc(4096, g.gpu_id, HOST, cpu=True))
      bos.append(eop := mem.alloc(s.eop, g.gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE))
      bos.append(save := mem.alloc(s.total, g.gpu_id, SAVE_AREA, cpu=True))
      self.ring, self.kernargs, self.ctl, self.eop, self.save_area = ring, kernargs, ctl, eop, save
      self.error_reason = ctl.va + ERROR_REASON_OFFSET
      for i in range(s.xcc):
        ctypes.memmove(save.va + i * s.per_xcc, ctypes.byref(save_area_header_t(
          DebugOffset=(s.xcc - i) * s.per_xcc, DebugSize=s.debug * s.xcc, ErrorReason=self.error_reason,
          ErrorEventId=dev.signals.event_id)), ctypes.sizeof(save_area_header_t))
      for i in range(RING_PACKETS): u16.from_address(ring.va + i * PACKET_BYTES).value = TYPE_INVALID
      self.q = amd_queue_t.from_address(ctl.va)
      self.q.hsa_queue.type, self.q.hsa_queue.base_address, self.q.hsa_queue.size = QUEUE_TYPE_MULTI, ring.va, RING_PACKETS
      self.q.read_dispatch_id_field_base_byte_offset = amd_queue_t.read_dispatch_id.offset
      self.q.queue_properties = QUEUE_PROPERTIES_IS_PTR64
      a = kfd.create_queue_args(ring_base_address=ring.va, ring_size=ring.size, gpu_id=g.gpu_id,
                                queue_type=kfd.QUEUE_COMPUTE_AQL, queue_percentage=kfd.MAX_QUEUE_PERCENTAGE,
                                queue_priority=kfd.NORMAL_QUEUE_PRIORITY,
                                write_pointer_address=ctl.va + amd_queue_t.write_dispatch_id.offset,
                                read_pointer_address=ctl.va + amd_queue_t.read_dispatch_id.offset,
                                eop_buffer_address=eop.va, eop_buffer_size=s.eop, ctx_save_restore_address=save.va,
                                ctx_save_restore_size=s.per_xcc, ctl_stack_size=s.ctl_stack)
      self.args = a
      create_queue(dev, a, "compute queue")
      self.chunk_done = [dev.signals.new() for _ in range(RING_PACKETS // CHUNK)]   # owned for the queue's life
      self.bos = list(bos)
    dev.signals.watch_errors(g.gpu_id, self.error_reason)
    self.queue_id, self.doorbell = a.queue_id, dev.doorbell(a.doorbell_offset)

  def destroy(self): destroy_queue(self.dev, self.queue_id, self.bos)

  def _slot(self) -> int:
    """The next packet index whose ring slot and kernel-argument slot are free: at a chunk's last slot
    its completion marker goes in first; a chunk is entered once its marker of a lap ago completed."""
    idx = self.q.write_dispatch_id
    if idx % CHUNK == CHUNK - 1:
      s = self.chunk_done[idx // CHUNK % len(self.chunk_done)]
      self.dev.signals.reset(s)
      self._publish(idx, barrier_and_packet_t(completion_signal=s), HEADER_FENCES | TYPE_BARRIER_AND)
      idx += 1
    if idx % CHUNK == 0 and idx >= RING_PACKETS:
      self.dev.signals.wait(self.chunk_done[idx // CHUNK % len(self.chunk_done)], "the compute work of a ring's lap ago")
    return idx

  def _publish(self, idx: int, packet, header: int, setup: int = 0):
    """Write the packet body, then header and setup in one 32-bit store, then the write id and the doorbell."""
    addr = self.ring.va + (idx % RING_PACKETS) * PACKET_BYTES
    ctypes.memmove(addr + 4, ctypes.addressof(packet) + 4, PACKET_BYTES - 4)
    u32.from_address(addr).value = header | (setup << 16)
    self.q.write_dispatch_id = idx + 1
    self.dev.os.doorbell(self.doorbell, idx)

  def dispatch(self, kd_va: int, kernarg: bytes, groups: tuple, block: tuple, group_bytes: int, private_bytes: int):
    if len(kernarg) > KERNARG_SLOT: raise kfd.AmdError(f"{len(kernarg)} bytes of kernel arguments (the slot holds {KERNARG_SLOT})")
    grid = [n * b for n, b in zip(groups, block)]
    if max(grid) >= 1 << 32: raise kfd.AmdError(f"a grid of {grid} work-items: each dimension must fit 32 bits")
    idx = self._slot()
    ka = self.kernargs.va + (idx % RING_PACKETS) * KERNARG_SLOT
    ctypes.memmove(ka, kernarg, len(kernarg))
    p = dispatch_packet_t(workgroup_size_x=block[0], workgroup_size_y=block[1], workgroup_size_z=block[2],
                          grid_size_x=grid[0], grid_size_y=grid[1], grid_size_z=grid[2],
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
