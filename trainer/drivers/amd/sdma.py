"""An SDMA queue (KFD queue type SDMA): a byte ring of dword packets, read/write pointers in bytes
(u64 slots in host memory), the doorbell written with the write pointer in bytes. Packet encodings
follow the kernel's published SDMA packet headers (vega10_sdma_pkt_open.h for SDMA 4.x, as on
gfx942/gfx950; sdma_v6_0_0_pkt_open.h for SDMA 6.0, gfx1100): tests/drivers checks each field.
A packet never straddles the ring end: the tail is padded with one-dword NOPs. The ring is executable
host memory (the engine fetches packets with execute permission, as ROCr's blit kernel allocates it);
the read and write pointers share one one-page buffer (KFD wants each in a one-page mapping)."""
from __future__ import annotations
import ctypes
from . import kfd
from .queue_setup import create_queue
from .sdma_packets import packets_for

RING_BYTES = 256 << 10
RING = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_EXECUTABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
HOST = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
ROOM_POLL_MS = 1                  # a full ring raises no interrupt when room frees up: WAIT_EVENTS naps this long


class SdmaQueue:
  def __init__(self, dev):
    self.dev, mem, g = dev, dev.memory, dev.gpu
    self.pk = packets_for(g.sdma_version)
    with mem.transaction() as bos:
      bos.append(ring := mem.alloc(RING_BYTES, g.gpu_id, RING, cpu=True))
      bos.append(ptrs := mem.alloc(4096, g.gpu_id, HOST, cpu=True))   # rptr at 0, wptr at 8
      self.ring, self.ptrs = ring, ptrs
      self.rptr, self.wptr = ctypes.c_uint64.from_address(ptrs.va), ctypes.c_uint64.from_address(ptrs.va + 8)
      a = kfd.create_queue_args(ring_base_address=ring.va, ring_size=RING_BYTES, gpu_id=g.gpu_id, queue_type=kfd.QUEUE_SDMA,
                                queue_percentage=kfd.MAX_QUEUE_PERCENTAGE, queue_priority=kfd.NORMAL_QUEUE_PRIORITY,
                                write_pointer_address=ptrs.va + 8, read_pointer_address=ptrs.va)
      self.args = a
      create_queue(dev, a, "SDMA queue")
    self.queue_id, self.doorbell = a.queue_id, dev.doorbell(a.doorbell_offset)
    self.pending = []

  def add(self, packet: bytes):
    """Queue a packet (submitted by `submit`)."""
    self.pending.append(packet)

  def submit(self):
    """Write the queued packets into the ring (padding so none straddles the end) and ring the doorbell."""
    pkts, self.pending = self.pending, []
    if not pkts: return
    w = self.wptr.value
    for pkt in pkts:
      pos = w % RING_BYTES
      if pos + len(pkt) > RING_BYTES:
        self._room(w, RING_BYTES - pos)
        ctypes.memmove(self.ring.va + pos, b"\0" * (RING_BYTES - pos), RING_BYTES - pos)   # NOP dwords
        w += RING_BYTES - pos; pos = 0
      self._room(w, len(pkt))
      ctypes.memmove(self.ring.va + pos, pkt, len(pkt))
      w += len(pkt)
    self.wptr.value = w
    self.dev.os.doorbell(self.doorbell, w)

  def _room(self, w: int, n: int):
    if w + n - self.rptr.value > RING_BYTES:
      self.wptr.value = w
      self.dev.os.doorbell(self.doorbell, w)
      self.dev.signals.wait_until(lambda: w + n - self.rptr.value <= RING_BYTES, "room in the SDMA ring", sleep_ms=ROOM_POLL_MS)

  def copy(self, dst: int, src: int, nbytes: int):
    step = self.pk.copy_max
    for off in range(0, nbytes, step):
      self.add(self.pk.copy_linear(dst + off, src + off, min(step, nbytes - off)))

  def signal(self, sig: int, interrupt: bool = True):
    """Complete signal `sig` (value 0) after the work before; with `interrupt`, wake sleepers (mailbox + trap)."""
    s = self.dev.signals
    self.add(self.pk.fence(sig + 8, 0)); self.add(self.pk.fence(sig + 12, 0))
    if interrupt: self.add(self.pk.fence(s.mailbox, s.event_id)); self.add(self.pk.trap(s.event_id))

  def wait(self, sig: int): self.add(self.pk.poll_equal(sig + 8, 0))
