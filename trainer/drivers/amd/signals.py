"""Signals and waiting. A signal is an `amd_signal_t` (hsa.py) in uncached host memory mapped on
every GPU: it starts at 1 and completes at 0 (the command processor decrements an AQL packet's
completion signal; an SDMA FENCE writes 0). A signal the CPU will sleep on names the process's KFD
signal event and its mailbox slot, so completion also raises an interrupt that wakes the sleeper;
one only GPUs wait for carries none (each interrupt costs the CPU). A wait spins on the value briefly,
then sleeps in WAIT_EVENTS together with the MEMORY and HW_EXCEPTION events, which is how KFD reports
GPU page faults and resets: those, and a queue error KFD wrote into a queue's error-reason slot,
become GpuFault errors naming the GPU and the address. WAIT_EVENTS may time out (a condition with no
interrupt behind it is polled that way) and, being interruptible, is restarted by the OS seam.

Reuse: a released signal is recycled only after every queue has drained (`drain`: marker signals on
each queue completed), because a packet already consumed from some ring may still write it."""
from __future__ import annotations
import ctypes, time
from . import kfd
from .hsa import signal_t, SIGNAL_KIND_USER, SIGNAL_BYTES

SIGNALS_PER_PAGE = 1024       # signals per allocation (64 KiB)
SPIN_S = 20e-6                # seconds of polling before sleeping in WAIT_EVENTS
SLEEP_MS = 100                # one WAIT_EVENTS sleep when an interrupt will wake it
TIMEOUT_S = 60.0              # a wait longer than this is reported as a hang
EVENT_PAGE_BYTES = kfd.SIGNAL_EVENT_LIMIT * kfd.EVENT_SLOT_BYTES
FAILURES = ("NotPresent", "ReadOnly", "NoExecute", "imprecise")


class Signals:
  """The process's signals and KFD events over all its GPUs (gpu_ids; the first holds the pages)."""
  def __init__(self, os_, kfd_fd: int, memory, gpu_ids: list, drain):
    self.os, self.fd, self.memory, self.gpu_ids, self.drain = os_, kfd_fd, memory, list(gpu_ids), drain
    self.flags = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED
    self.event_page = memory.alloc(EVENT_PAGE_BYTES, gpu_ids[0], self.flags, cpu=True, gpus=gpu_ids)
    ev = self._event(kfd.EVENT_SIGNAL, page=self.event_page.handle)
    self.event_id, self.mailbox = ev.event_id, self.event_page.va + ev.event_slot_index * kfd.EVENT_SLOT_BYTES
    self.memory_event = self._event(kfd.EVENT_MEMORY).event_id
    self.hw_event = self._event(kfd.EVENT_HW_EXCEPTION).event_id
    self.pages, self.free, self.released = [], [], []
    self.errors = []              # (gpu_id, address of a queue's error-reason u64)
    self.waits = (kfd.event_data * 3)()
    for d, e in zip(self.waits, (self.event_id, self.memory_event, self.hw_event)): d.event_id = e

  def _event(self, kind: int, page: int = 0):
    return self.os.ioctl(self.fd, kfd.CREATE_EVENT, kfd.create_event_args(event_type=kind, auto_reset=1, event_page_offset=page))

  def new(self, interrupt: bool = True) -> int:
    """A signal at value 1 (its address); `interrupt`: its completion wakes a CPU sleeping on it."""
    if not self.free:
      if self.released:
        self.drain()
        self.free, self.released = self.released, []
      else:
        bo = self.memory.alloc(SIGNALS_PER_PAGE * SIGNAL_BYTES, self.gpu_ids[0], self.flags, cpu=True, gpus=self.gpu_ids)
        self.pages.append(bo)
        self.free = [bo.va + i * SIGNAL_BYTES for i in range(SIGNALS_PER_PAGE)]
    addr = self.free.pop()
    self.reset(addr, interrupt)
    return addr

  def reset(self, addr: int, interrupt: bool = True):
    """Set a signal (one no queue may still write) back to 1."""
    s = signal_t(kind=SIGNAL_KIND_USER, value=1)
    if interrupt: s.event_mailbox_ptr, s.event_id = self.mailbox, self.event_id
    ctypes.memmove(addr, ctypes.byref(s), SIGNAL_BYTES)

  def release(self, addr: int): self.released.append(addr)
  def watch_errors(self, gpu_id: int, addr: int): self.errors.append((gpu_id, addr))
  @staticmethod
  def value(addr: int) -> int: return ctypes.c_int64.from_address(addr + signal_t.value.offset).value
  def done(self, addr: int) -> bool: return self.value(addr) <= 0

  def wait(self, addr: int, what: str): self.wait_until(lambda: self.done(addr), what)

  def wait_until(self, cond, what: str, sleep_ms: int = SLEEP_MS):
    """Return once cond() holds; a GPU fault or a hang raises. `sleep_ms`: how long one WAIT_EVENTS may
    sleep (short where no interrupt will come when cond() starts to hold)."""
    if cond(): return
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SPIN_S:
      if cond(): return
    while not cond():
      a = kfd.wait_events_args(events_ptr=ctypes.addressof(self.waits), num_events=3, wait_for_all=0, timeout=sleep_ms)
      self.os.ioctl(self.fd, kfd.WAIT_EVENTS, a)
      self.check_faults()
      if a.wait_result == kfd.WAIT_FAIL: raise kfd.AmdError(f"WAIT_EVENTS failed while waiting for {what}")
      if time.perf_counter() - t0 > TIMEOUT_S: raise kfd.GpuFault(f"the GPU did not finish {what} in {TIMEOUT_S:.0f} s (a hang?)")

  def check_faults(self):
    m, h = self.waits[1].memory_exception_data, self.waits[2].hw_exception_data
    if m.gpu_id:
      kinds = [f for f in FAILURES if getattr(m.failure, f)] or ["unknown"]
      raise kfd.GpuFault(f"GPU memory fault on gpu_id {m.gpu_id} at address {m.va:#x} ({', '.join(kinds)}): "
                         "the GPU touched memory not mapped in its page table (e.g. a peer's buffer never mapped to it), "
                         "wrote read-only memory or fetched from memory not executable")
    if h.gpu_id:
      raise kfd.GpuFault(f"GPU hardware exception on gpu_id {h.gpu_id}: reset type {h.reset_type}, cause {h.reset_cause} "
                         f"({'GPU hang' if h.reset_cause == 0 else 'ECC error'}), memory lost: {bool(h.memory_lost)}")
    for gpu_id, addr in self.errors:
      reason = ctypes.c_uint64.from_address(addr).value
      if reason: raise kfd.GpuFault(f"queue error on gpu_id {gpu_id}: KFD reported exception bits {reason:#x}")
