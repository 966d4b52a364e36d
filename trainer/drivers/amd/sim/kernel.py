"""The simulated KFD: the object behind the driver's OS seam (an os_seam.Seam, like the real
kernel's LinuxOs) when TRAINER_AMD_SIM names GPU kinds or machines. It answers the KFD ioctls as
the kernel does (argument sizes, validation, errors as errno): memory through memory.py (BOs,
AQL_QUEUE_MEM, page tables with permissions, VRAM the CPU never mapped is PROT_NONE at its VA),
CREATE_QUEUE through kfd_queue.py (the buffer checks of kfd_queue.c against the node's sizes), events
as kfd_events.c handles them (a signal event fires from an interrupt only if its mailbox slot was
written, the SDMA trap carries 28 bits of context), WAIT_EVENTS that can time out or (when asked)
be interrupted with EINTR, and the RUNTIME_ENABLE state. Engines (engines.py) run when the driver
rings a doorbell or sleeps in WAIT_EVENTS, queues in random order; `asynchronous` (the default)
makes them run as the hardware does, read pointers ahead of completion. Faults are delivered as KFD
delivers them: a memory fault through the MEMORY event's data (address, gpu_id, NotPresent /
ReadOnly / NoExecute), a hang or a bad packet as a HW_EXCEPTION."""
from __future__ import annotations
import ctypes, errno, os, random
from dataclasses import dataclass, field
from .. import kfd
from ..os_seam import Seam, MAP_FIXED
from . import sysfs, kfd_queue
from .memory import SimBo, PageTable, MemoryFault, reserve, host_free, protect, PROT_RW
from .engines import AqlEngine, SdmaEngine, QueueError

KFD_FD, RENDER_FD0 = 1000, 1100      # file descriptors the simulated device files get
VERSION = (1, 14)
PAGE = 4096
UNSIGNALED_EVENT_SLOT = (1 << 64) - 1   # kfd_events.c: a signal slot nobody has written
TICKS_PER_MS = 100                   # engine ticks per millisecond of a WAIT_EVENTS timeout (asynchronous)
DOORBELL_TICKS = 2                   # most engine ticks a doorbell write lets pass (asynchronous)
RUNTIME_ENABLE_MODE_ENABLE = 1       # KFD_RUNTIME_ENABLE_MODE_ENABLE_MASK


@dataclass(eq=False)
class SimGpu:
  index: int
  gpu_id: int
  kind: str
  props: dict
  vm: bool = False
  table: PageTable = None
  sizes: dict = field(default_factory=dict)     # the node's queue sizes (kfd_queue.node_sizes)

  @property
  def wave(self) -> int: return self.props["wave_front_size"]
  @property
  def lds_bytes(self) -> int: return self.props["lds_size_in_kb"] * 1024
  @property
  def sdma_major(self) -> int: return sysfs.KINDS[self.kind]["ip"][1][0]


class SimKernel(Seam):
  def __init__(self, kinds, unreachable=(), asynchronous: bool = True, old_kernel: bool = False, seed: int = 0,
               eintr_every: int = 0):
    """kinds: GPU kinds or machine names (sysfs.KINDS, sysfs.MACHINES); unreachable: pairs of GPU indices
    with no peer path; old_kernel: nodes do not publish cwsr_size / ctl_stack_size; eintr_every: every
    n-th WAIT_EVENTS is interrupted (EINTR)."""
    self.kinds = sysfs.expand(kinds)
    self.files = sysfs.tree(self.kinds, old_kernel)
    self.dirs = {os.path.dirname(p) for p in self.files}
    for p in list(self.dirs):
      while p and p != "/": p = os.path.dirname(p); self.dirs.add(p)
    self.gpus = []
    for i, k in enumerate(self.kinds):
      props = sysfs.node_props(k, i, len(self.kinds), old_kernel)
      gid = sysfs.gpu_id(i)
      self.gpus.append(SimGpu(i, gid, k.split("-")[0], props, table=PageTable(gid), sizes=kfd_queue.node_sizes(props)))
    self.by_id = {g.gpu_id: g for g in self.gpus}
    self.unreachable = {frozenset(p) for p in unreachable}
    self.asynchronous, self.rng, self.eintr_every = asynchronous, random.Random(seed), eintr_every
    self.bos, self.events, self.queues, self.doorbell_pages, self.open_fds = {}, {}, {}, {}, set()
    self.next_handle, self.next_queue, self.next_other_event = 1, 1, kfd.SIGNAL_EVENT_LIMIT
    self.event_page = None
    self.memory_fault = None    # (gpu_id, va, failure kind) not yet reported
    self.hw_fault = None        # (gpu_id, reset cause, what)
    self.runtime = None         # RUNTIME_ENABLE: None (never), or the number of VMs acquired when it was enabled
    self.queue_log = []         # (gpu_id, create_queue_args as sent) of every queue made
    self.reservations = {}      # address -> size of the process's anonymous mappings (the driver's VA reservations)
    self.waits = 0
    self.stats = {"dispatches": 0, "sdma_bytes": 0, "sdma_copies": 0, "wait_timeouts": 0, "interrupts": 0}
    self.handlers = {kfd.GET_VERSION: self._version, kfd.RUNTIME_ENABLE: self._runtime_enable, kfd.ACQUIRE_VM: self._acquire_vm,
                     kfd.ALLOC_MEMORY_OF_GPU: self._alloc, kfd.FREE_MEMORY_OF_GPU: self._free, kfd.MAP_MEMORY_TO_GPU: self._map,
                     kfd.UNMAP_MEMORY_FROM_GPU: self._unmap, kfd.CREATE_QUEUE: self._create_queue,
                     kfd.DESTROY_QUEUE: self._destroy_queue, kfd.CREATE_EVENT: self._create_event,
                     kfd.DESTROY_EVENT: lambda a: self.events.pop(a.event_id, None), kfd.WAIT_EVENTS: self._wait_events}

  # -- files
  def open(self, path: str, flags: int) -> int:
    if path == "/dev/kfd": fd = KFD_FD
    elif path.startswith("/dev/dri/renderD") and path[16:].isdigit() and 0 <= int(path[16:]) - sysfs.FIRST_RENDER_MINOR < len(self.gpus):
      fd = RENDER_FD0 + int(path[16:]) - sysfs.FIRST_RENDER_MINOR
    else: raise OSError(errno.ENOENT, f"{path}: no such device in the simulated machine")
    self.open_fds.add(fd)
    return fd

  def close(self, fd: int): self.open_fds.discard(fd)
  def read_text(self, path: str) -> str:
    if path not in self.files: raise OSError(errno.ENOENT, path)
    return self.files[path]
  def listdir(self, path: str) -> list[str]:
    if path not in self.dirs: raise OSError(errno.ENOENT, path)
    pre = path.rstrip("/") + "/"
    return sorted({p[len(pre):].split("/")[0] for p in self.files if p.startswith(pre)})
  def exists(self, path: str) -> bool: return path in self.files or path in self.dirs

  # -- ioctl
  def sys_ioctl(self, fd: int, request: int, arg):
    if fd != KFD_FD or fd not in self.open_fds: raise OSError(errno.EBADF, "ioctl on a file that is not /dev/kfd")
    h = self.handlers.get(request)
    if h is None: raise OSError(errno.EINVAL, f"ioctl {request:#x}: not a KFD command the simulator knows")
    if (request >> 16) & 0x3FFF != ctypes.sizeof(arg): raise OSError(errno.EINVAL, f"ioctl {request:#x}: argument of {ctypes.sizeof(arg)} bytes")
    h(arg)
    return arg

  def _gpu(self, gpu_id: int) -> SimGpu:
    if gpu_id not in self.by_id: raise OSError(errno.EINVAL, f"no GPU with gpu_id {gpu_id}")
    return self.by_id[gpu_id]

  def _version(self, a): a.major_version, a.minor_version = VERSION

  def _runtime_enable(self, a):
    """kfd_ioctl_runtime_enable: the ENABLE bit enables (EBUSY if enabled, EEXIST once queues exist); without it, disables."""
    if not a.mode_mask & RUNTIME_ENABLE_MODE_ENABLE:
      self.runtime = None
      return
    if self.runtime is not None: raise OSError(errno.EBUSY, "RUNTIME_ENABLE: the runtime is enabled already")
    if self.queues: raise OSError(errno.EEXIST, "RUNTIME_ENABLE after queues were made")
    self.runtime = sum(g.vm for g in self.gpus)

  def _acquire_vm(self, a):
    g = self._gpu(a.gpu_id)
    if a.drm_fd != RENDER_FD0 + g.index or a.drm_fd not in self.open_fds: raise OSError(errno.EINVAL, "ACQUIRE_VM: not this GPU's render node")
    g.vm = True

  def _alloc(self, a):
    g = self._gpu(a.gpu_id)
    kinds = a.flags & kfd.MEM_TYPES
    if bin(kinds).count("1") != 1 or kinds not in (kfd.MEM_VRAM, kfd.MEM_GTT): raise OSError(errno.EINVAL, "ALLOC: one of VRAM or GTT")
    if not g.vm: raise OSError(errno.EINVAL, "ALLOC before ACQUIRE_VM")
    if a.va_addr % PAGE or a.size % PAGE or a.size == 0: raise OSError(errno.EINVAL, "ALLOC: address and size must be whole pages")
    if any(b.va < a.va_addr + a.size and a.va_addr < b.va + b.size for b in self.bos.values()):
      raise OSError(errno.EINVAL, "ALLOC: the range overlaps another buffer")
    bo = SimBo.create(self.next_handle, a.va_addr, a.size, a.gpu_id, a.flags)
    self.next_handle += 1
    self.bos[bo.handle] = bo
    a.handle, a.mmap_offset = bo.handle, bo.mmap_offset

  def _bo(self, handle: int) -> SimBo:
    if handle not in self.bos: raise OSError(errno.EINVAL, f"no buffer with handle {handle}")
    return self.bos[handle]

  def _free(self, a):
    bo = self._bo(a.handle)
    if bo.mapped: raise OSError(errno.EBUSY, "FREE of a buffer still mapped to a GPU")
    bo.release()
    del self.bos[bo.handle]

  def _ids(self, a) -> list[int]:
    return list(kfd.array_type(ctypes.c_uint32, a.n_devices).from_address(a.device_ids_array_ptr))

  def _map(self, a):
    bo = self._bo(a.handle)
    for gid in self._ids(a)[a.n_success:]:
      g = self._gpu(gid)
      owner = self.by_id[bo.gpu_id]
      if not g.vm: raise OSError(errno.EINVAL, f"MAP to gpu_id {gid} before its ACQUIRE_VM")
      if bo.flags & kfd.MEM_VRAM and frozenset((g.index, owner.index)) in self.unreachable:   # kfd_mem_attach: a peer's VRAM needs XGMI or P2P
        raise OSError(errno.EINVAL, f"gpu_id {gid} cannot reach gpu_id {bo.gpu_id}'s VRAM")
      if gid not in bo.mapped:
        bo.mapped.add(gid)
        g.table.add(bo)
      a.n_success += 1

  def _unmap(self, a):
    bo = self._bo(a.handle)
    for gid in self._ids(a)[a.n_success:]:
      g = self._gpu(gid)
      if gid not in bo.mapped: raise OSError(errno.EINVAL, f"UNMAP from gpu_id {gid}, which does not map it")
      bo.mapped.discard(gid)
      g.table.remove(bo)
      a.n_success += 1

  def bo_at(self, va: int) -> SimBo:
    for b in self.bos.values():
      if b.va <= va < b.va + b.size: return b
    raise KeyError(va)

  def _create_queue(self, a):
    g = self._gpu(a.gpu_id)
    ring_size = kfd_queue.check_arguments(a)
    kfd_queue.acquire_buffers(g.table, g.props, g.sizes, a, ring_size)
    if a.queue_type == kfd.QUEUE_COMPUTE_AQL: eng = AqlEngine(self, g, a)
    elif a.queue_type == kfd.QUEUE_SDMA: eng = SdmaEngine(self, g, a)
    else: raise OSError(errno.EINVAL, f"CREATE_QUEUE: queue type {a.queue_type} is not simulated")
    slot = sum(1 for q in self.queues.values() if q.gpu is g)
    a.queue_id = self.next_queue; self.next_queue += 1
    a.doorbell_offset = kfd.MMAP_TYPE_DOORBELL | (g.gpu_id << kfd.MMAP_GPU_ID_SHIFT) | (slot * 8)
    eng.doorbell_slot = slot
    self.queues[a.queue_id] = eng
    self.queue_log.append((g.gpu_id, type(a).from_buffer_copy(a)))

  def _destroy_queue(self, a):
    if a.queue_id not in self.queues: raise OSError(errno.EINVAL, f"no queue {a.queue_id}")
    del self.queues[a.queue_id]

  # -- events (kfd_events.c)
  def _slots(self):
    return kfd.array_type(ctypes.c_uint64, self.event_page.backing // 8).from_address(self.event_page.alias)

  def _create_event(self, a):
    if a.event_type == kfd.EVENT_SIGNAL:
      if self.event_page is None:
        if not a.event_page_offset: raise OSError(errno.EINVAL, "the first signal event needs the event page")
        self.event_page = self._bo(a.event_page_offset)
      used = {e for e, ev in self.events.items() if ev["type"] == kfd.EVENT_SIGNAL}
      eid = next(i for i in range(kfd.SIGNAL_EVENT_LIMIT + 1) if i not in used)   # idr_alloc from 0 (allocate_event_notification_slot)
      if eid * 8 >= self.event_page.backing: raise OSError(errno.ENOSPC, "no signal slot left in the event page")
      self._slots()[eid] = UNSIGNALED_EVENT_SLOT
      a.event_slot_index = a.event_trigger_data = eid
    elif a.event_type in (kfd.EVENT_MEMORY, kfd.EVENT_HW_EXCEPTION):   # ids above the signal range (create_other_event)
      eid = self.next_other_event; self.next_other_event += 1
    else: raise OSError(errno.EINVAL, f"event type {a.event_type} is not simulated")
    a.event_id = eid
    self.events[eid] = {"type": a.event_type, "auto_reset": a.auto_reset, "signaled": False}

  def interrupt(self, context_id: int, valid_bits: int):
    """kfd_signal_event_interrupt: the event whose id matches and whose slot was written fires (its slot
    acknowledged); when none does, every signal event with a written slot does."""
    self.stats["interrupts"] += 1
    if self.event_page is None: return
    slots = self._slots()
    ids = range(context_id, kfd.SIGNAL_EVENT_LIMIT, 1 << valid_bits) if valid_bits < 32 else [context_id]
    hit = next((i for i in ids if i < kfd.SIGNAL_EVENT_LIMIT and slots[i] != UNSIGNALED_EVENT_SLOT and i in self.events), None)
    for i in ([hit] if hit is not None else [i for i, e in self.events.items() if e["type"] == kfd.EVENT_SIGNAL]):
      if slots[i] != UNSIGNALED_EVENT_SLOT:
        slots[i] = UNSIGNALED_EVENT_SLOT
        self.events[i]["signaled"] = True

  def _wait_events(self, a):
    self.waits += 1
    if self.eintr_every and self.waits % self.eintr_every == 0: raise OSError(errno.EINTR, "WAIT_EVENTS interrupted by a signal")
    data = kfd.array_type(kfd.event_data, a.num_events).from_address(a.events_ptr)
    for d in data:
      if d.event_id not in self.events: raise OSError(errno.EINVAL, f"WAIT_EVENTS on unknown event {d.event_id}")
    moved_any = False
    for _ in range(max(1, a.timeout) * TICKS_PER_MS if self.asynchronous else 1):
      if self._report(data): break
      moved = self.run()
      moved_any |= moved
      if not moved:
        if self._report(data): break
        if moved_any: return self._timeout(a)     # the work went as far as it goes; no event: the sleep runs out
        stuck = [q.describe() for q in self.queues.values() if not q.idle()]   # nothing moved and nothing will: a hang
        self.hw_fault = (self.gpus[0].gpu_id if not stuck else stuck[0][0], 0, "; ".join(s for _, s in stuck) or "nothing queued")
        self._report(data)
        break
    else:
      if not self._report(data): return self._timeout(a)
    a.wait_result = kfd.WAIT_COMPLETE

  def _timeout(self, a):
    a.wait_result = kfd.WAIT_TIMEOUT
    self.stats["wait_timeouts"] += 1

  def _report(self, data) -> bool:
    """Fill the event data of what happened (faults, signaled events); whether anything had."""
    hit = False
    for d in data:
      ev = self.events[d.event_id]
      if ev["type"] == kfd.EVENT_MEMORY and self.memory_fault:
        gid, va, kind = self.memory_fault
        m = d.memory_exception_data
        m.gpu_id, m.va = gid, va
        setattr(m.failure, kind, 1)
        hit = True
      elif ev["type"] == kfd.EVENT_HW_EXCEPTION and self.hw_fault:
        h = d.hw_exception_data
        h.gpu_id, h.reset_type, h.reset_cause, h.memory_lost = self.hw_fault[0], 1, self.hw_fault[1], 0
        hit = True
      elif ev["signaled"]:
        hit = True
        if ev["auto_reset"]: ev["signaled"] = False
    return hit

  def run(self) -> bool:
    """Let the engines work: asynchronous, one step of each queue in random order; else every queue as
    far as it goes, again until none moves. Whether any did."""
    queues = [q for q in self.queues.values() if not q.halted]
    self.rng.shuffle(queues)
    any_moved = False
    while True:
      moved = False
      for q in queues:
        if q.halted: continue
        try: moved |= q.step() if self.asynchronous else self._drain(q)
        except MemoryFault as f:
          q.halted, self.memory_fault = str(f), (f.gpu_id, f.va, f.kind)
        except QueueError as f:
          q.halted, self.hw_fault = str(f), (f.gpu_id, 0, str(f))
      any_moved |= moved
      if self.asynchronous or not moved: return any_moved

  @staticmethod
  def _drain(q) -> bool:
    moved = False
    while q.step(): moved = True
    return moved

  # -- memory maps
  def mmap(self, addr: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    if fd == -1:
      r = reserve(addr, size, prot, flags)
      self.reservations[r] = size
      return r
    if fd == KFD_FD:
      if offset & (3 << kfd.MMAP_TYPE_SHIFT) != kfd.MMAP_TYPE_DOORBELL or size != kfd.DOORBELL_PAGE_BYTES:
        raise OSError(errno.EINVAL, "mmap of /dev/kfd: only doorbell pages (8 KiB) are simulated")
      gid = (offset >> kfd.MMAP_GPU_ID_SHIFT) & 0xFFFF
      self._gpu(gid)
      if gid not in self.doorbell_pages: self.doorbell_pages[gid] = (ctypes.c_uint64 * (kfd.DOORBELL_PAGE_BYTES // 8))()
      return ctypes.addressof(self.doorbell_pages[gid])
    g = next((g for g in self.gpus if RENDER_FD0 + g.index == fd), None)
    bo = next((b for b in self.bos.values() if b.mmap_offset == offset), None)
    if g is None or bo is None or bo.gpu_id != g.gpu_id: raise OSError(errno.EINVAL, f"mmap: no buffer at offset {offset:#x} of this render node")
    if size > bo.backing: raise OSError(errno.EINVAL, f"mmap of {size} bytes of a buffer of {bo.backing} (drm_gem_mmap_obj)")
    if not flags & MAP_FIXED or addr != bo.va: raise OSError(errno.EINVAL, "mmap of a buffer: at its own address, fixed")
    protect(bo.va, bo.backing, PROT_RW)
    bo.cpu = True
    return bo.va

  def munmap(self, addr: int, size: int):
    if any(ctypes.addressof(p) == addr for p in self.doorbell_pages.values()): return
    self.reservations.pop(addr, None)
    host_free(addr, size)

  def doorbell(self, addr: int, value: int):
    ctypes.c_uint64.from_address(addr).value = value
    for q in self.queues.values():
      page = self.doorbell_pages.get(q.gpu.gpu_id)
      if page is not None and ctypes.addressof(page) + q.doorbell_slot * 8 == addr:
        try: q.ring(value)
        except QueueError as f: q.halted, self.hw_fault = str(f), (f.gpu_id, 0, str(f))
        if self.asynchronous:       # the GPU works while the CPU goes on
          for _ in range(self.rng.randint(0, DOORBELL_TICKS)): self.run()
        return
    raise OSError(errno.EFAULT, f"a doorbell write to {addr:#x}, which is no queue's doorbell")
