"""The simulated KFD: the object the driver's OS seam talks to (os_seam.LinuxOs's methods) when
TRAINER_AMD_SIM names GPU kinds. It answers the KFD ioctls as the kernel does (argument sizes,
validation, errors as errno), backs each buffer object with host memory at the virtual address the
driver chose (CPU VA == GPU VA, so a simulated GPU reads and writes the same bytes), keeps one page
table per GPU (a buffer is reachable only from the GPUs it was mapped to), hands out doorbell pages,
and runs the queues' engines when the driver sleeps in WAIT_EVENTS (queues in reverse order of
creation, each as far as it can go, until none moves: work the driver did not order may run in an
order it did not expect). Faults are delivered as KFD delivers them: a memory fault through the
MEMORY event's data (address, gpu_id, NotPresent), a hang or a ring overflow as a HW_EXCEPTION."""
from __future__ import annotations
import bisect, ctypes, errno, os
from dataclasses import dataclass, field
from .. import kfd
from ..os_seam import LinuxOs, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS
from . import sysfs
from .engines import AqlEngine, SdmaEngine, SimFault

KFD_FD, RENDER_FD0 = 1000, 1100      # file descriptors the simulated device files get
VERSION = (1, 14)
PAGE = 4096


@dataclass(eq=False)
class SimBo:
  handle: int
  va: int
  size: int
  gpu_id: int
  flags: int
  mmap_offset: int
  mapped: set = field(default_factory=set)


@dataclass(eq=False)
class SimGpu:
  index: int
  gpu_id: int
  kind: str
  wave: int
  lds_bytes: int
  vm: bool = False
  starts: list = field(default_factory=list)   # page table: sorted BO starts ...
  bos: list = field(default_factory=list)      # ... and the BOs


class SimKernel:
  def __init__(self, kinds: list[str], unreachable=()):
    """kinds: one GPU kind per GPU (sysfs.KINDS); unreachable: pairs of GPU indices with no peer path."""
    self.host = LinuxOs()
    self.kinds, self.files = list(kinds), sysfs.tree(kinds)
    self.dirs = {os.path.dirname(p) for p in self.files}
    for p in list(self.dirs):
      while p and p != "/": p = os.path.dirname(p); self.dirs.add(p)
    self.gpus = [SimGpu(i, sysfs.gpu_id(i), k, sysfs.KINDS[k]["wave_front_size"], sysfs.KINDS[k]["lds_size_in_kb"] * 1024)
                 for i, k in enumerate(kinds)]
    self.by_id = {g.gpu_id: g for g in self.gpus}
    self.unreachable = {frozenset(p) for p in unreachable}
    self.bos, self.events, self.queues, self.doorbell_pages, self.open_fds = {}, {}, {}, {}, set()
    self.next_handle, self.next_event, self.next_queue = 1, 1, 1
    self.event_page = None
    self.memory_fault = None    # (gpu_id, va) not yet reported
    self.hw_fault = None        # (gpu_id, reset cause, what)
    self.stats = {"dispatches": 0, "sdma_bytes": 0}
    self.handlers = {kfd.GET_VERSION: self._version, kfd.RUNTIME_ENABLE: lambda a: None, kfd.ACQUIRE_VM: self._acquire_vm,
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
  def ioctl(self, fd: int, request: int, arg):
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
    self.host.mmap(a.va_addr, a.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    bo = SimBo(self.next_handle, a.va_addr, a.size, a.gpu_id, a.flags, self.next_handle << 20)
    self.next_handle += 1
    self.bos[bo.handle] = bo
    a.handle, a.mmap_offset = bo.handle, bo.mmap_offset

  def _bo(self, handle: int) -> SimBo:
    if handle not in self.bos: raise OSError(errno.EINVAL, f"no buffer with handle {handle}")
    return self.bos[handle]

  def _free(self, a):
    bo = self._bo(a.handle)
    if bo.mapped: raise OSError(errno.EBUSY, "FREE of a buffer still mapped to a GPU")
    del self.bos[bo.handle]

  def _ids(self, a) -> list[int]:
    return list(kfd.array_type(ctypes.c_uint32, a.n_devices).from_address(a.device_ids_array_ptr))

  def _map(self, a):
    bo = self._bo(a.handle)
    for gid in self._ids(a)[a.n_success:]:
      g = self._gpu(gid)
      owner = self.by_id[bo.gpu_id]
      if not g.vm: raise OSError(errno.EINVAL, f"MAP to gpu_id {gid} before its ACQUIRE_VM")
      if frozenset((g.index, owner.index)) in self.unreachable: raise OSError(errno.EINVAL, f"gpu_id {gid} cannot reach gpu_id {bo.gpu_id}")
      if gid not in bo.mapped:
        bo.mapped.add(gid)
        i = bisect.bisect(g.starts, bo.va)
        g.starts.insert(i, bo.va); g.bos.insert(i, bo)
      a.n_success += 1

  def _unmap(self, a):
    bo = self._bo(a.handle)
    for gid in self._ids(a)[a.n_success:]:
      g = self._gpu(gid)
      if gid not in bo.mapped: raise OSError(errno.EINVAL, f"UNMAP from gpu_id {gid}, which does not map it")
      bo.mapped.discard(gid)
      i = g.bos.index(bo)
      del g.starts[i], g.bos[i]
      a.n_success += 1

  def check(self, gpu_id: int, va: int, n: int, what: str):
    """Raise SimFault unless [va, va+n) lies in one buffer mapped on this GPU."""
    g = self.by_id[gpu_id]
    i = bisect.bisect(g.starts, va) - 1
    if i < 0 or va + n > g.bos[i].va + g.bos[i].size:
      raise SimFault(gpu_id, va, f"{what} at {va:#x} ({n} bytes) on gpu_id {gpu_id}: not mapped on this GPU")
    return g.bos[i]

  def bo_at(self, va: int) -> SimBo:
    for b in self.bos.values():
      if b.va <= va < b.va + b.size: return b
    raise KeyError(va)

  def _create_queue(self, a):
    g = self._gpu(a.gpu_id)
    size = a.ring_size
    if size < kfd.MIN_QUEUE_RING_SIZE or size & (size - 1): raise OSError(errno.EINVAL, "CREATE_QUEUE: ring size must be a power of two >= 1 KiB")
    try:
      self.check(g.gpu_id, a.ring_base_address, size, "the ring")
      self.check(g.gpu_id, a.read_pointer_address, 8, "the read pointer")
      self.check(g.gpu_id, a.write_pointer_address, 8, "the write pointer")
      if a.queue_type == kfd.QUEUE_COMPUTE_AQL:
        if a.eop_buffer_size == 0 or a.ctx_save_restore_size == 0 or a.ctl_stack_size >= a.ctx_save_restore_size:
          raise OSError(errno.EINVAL, "CREATE_QUEUE: a compute queue needs an EOP buffer and a context save area")
        self.check(g.gpu_id, a.eop_buffer_address, a.eop_buffer_size, "the EOP buffer")
        self.check(g.gpu_id, a.ctx_save_restore_address, a.ctx_save_restore_size, "the context save area")
    except SimFault as f: raise OSError(errno.EFAULT, str(f)) from None
    if a.queue_type == kfd.QUEUE_COMPUTE_AQL: eng = AqlEngine(self, g, a)
    elif a.queue_type == kfd.QUEUE_SDMA: eng = SdmaEngine(self, g, a)
    else: raise OSError(errno.EINVAL, f"CREATE_QUEUE: queue type {a.queue_type} is not simulated")
    slot = sum(1 for q in self.queues.values() if q.gpu is g)
    a.queue_id = self.next_queue; self.next_queue += 1
    a.doorbell_offset = kfd.MMAP_TYPE_DOORBELL | (g.gpu_id << kfd.MMAP_GPU_ID_SHIFT) | (slot * 8)
    eng.doorbell_slot = slot
    self.queues[a.queue_id] = eng

  def _destroy_queue(self, a):
    if a.queue_id not in self.queues: raise OSError(errno.EINVAL, f"no queue {a.queue_id}")
    del self.queues[a.queue_id]

  def _create_event(self, a):
    if a.event_type == kfd.EVENT_SIGNAL:
      if self.event_page is None:
        if not a.event_page_offset: raise OSError(errno.EINVAL, "the first signal event needs the event page")
        self.event_page = self._bo(a.event_page_offset)
      slot = sum(1 for e in self.events.values() if e["type"] == kfd.EVENT_SIGNAL)
      a.event_slot_index, a.event_trigger_data = slot, self.next_event
    elif a.event_type not in (kfd.EVENT_MEMORY, kfd.EVENT_HW_EXCEPTION):
      raise OSError(errno.EINVAL, f"event type {a.event_type} is not simulated")
    a.event_id = self.next_event; self.next_event += 1
    self.events[a.event_id] = {"type": a.event_type, "auto_reset": a.auto_reset, "signaled": False}

  def fire(self, event_id: int):
    """An interrupt with this context id (the event id) arrived."""
    if event_id in self.events: self.events[event_id]["signaled"] = True

  def _wait_events(self, a):
    progress = self.run_queues()
    data = kfd.array_type(kfd.event_data, a.num_events).from_address(a.events_ptr)
    hit = False
    for d in data:
      ev = self.events.get(d.event_id)
      if ev is None: raise OSError(errno.EINVAL, f"WAIT_EVENTS on unknown event {d.event_id}")
      if ev["type"] == kfd.EVENT_MEMORY and self.memory_fault:
        gid, va = self.memory_fault
        m = d.memory_exception_data
        m.gpu_id, m.va, m.failure.NotPresent = gid, va, 1
        hit = True
      elif ev["type"] == kfd.EVENT_HW_EXCEPTION and self.hw_fault:
        h = d.hw_exception_data
        h.gpu_id, h.reset_type, h.reset_cause, h.memory_lost = self.hw_fault[0], 1, self.hw_fault[1], 0
        hit = True
      elif ev["signaled"]:
        hit = True
        if ev["auto_reset"]: ev["signaled"] = False
    if not hit and not progress:   # nothing ran and nothing will: report the hang at once instead of sleeping
      stuck = [q.describe() for q in self.queues.values() if not q.idle()]
      self.hw_fault = (self.gpus[0].gpu_id if not stuck else stuck[0][0], 0, "; ".join(s for _, s in stuck) or "nothing queued")
      for d in data:
        if self.events[d.event_id]["type"] == kfd.EVENT_HW_EXCEPTION:
          h = d.hw_exception_data
          h.gpu_id, h.reset_type, h.reset_cause = self.hw_fault[0], 1, 0
    a.wait_result = kfd.WAIT_COMPLETE

  def run_queues(self) -> bool:
    """Run every queue as far as it goes, again until none moves; whether any did."""
    any_progress = False
    while True:
      moved = False
      for q in reversed(list(self.queues.values())):
        if q.halted: continue
        try: moved |= q.run()
        except SimFault as f:
          q.halted = str(f)
          if f.va is not None: self.memory_fault = (f.gpu_id, f.va)
          else: self.hw_fault = (f.gpu_id, 0, str(f))
      any_progress |= moved
      if not moved: return any_progress

  # -- memory maps
  def mmap(self, addr: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    if fd == -1: return self.host.mmap(addr, size, prot, flags, fd, offset)
    if fd == KFD_FD:
      if offset & (3 << kfd.MMAP_TYPE_SHIFT) != kfd.MMAP_TYPE_DOORBELL or size != kfd.DOORBELL_PAGE_BYTES:
        raise OSError(errno.EINVAL, "mmap of /dev/kfd: only doorbell pages (8 KiB) are simulated")
      gid = (offset >> kfd.MMAP_GPU_ID_SHIFT) & 0xFFFF
      g = self._gpu(gid)
      if gid not in self.doorbell_pages: self.doorbell_pages[gid] = (ctypes.c_uint64 * (kfd.DOORBELL_PAGE_BYTES // 8))()
      return ctypes.addressof(self.doorbell_pages[gid])
    g = next((g for g in self.gpus if RENDER_FD0 + g.index == fd), None)
    bo = next((b for b in self.bos.values() if b.mmap_offset == offset), None)
    if g is None or bo is None or bo.gpu_id != g.gpu_id: raise OSError(errno.EINVAL, f"mmap: no buffer at offset {offset:#x} of this render node")
    if not flags & MAP_FIXED or addr != bo.va or size > bo.size: raise OSError(errno.EINVAL, "mmap of a buffer: at its own address, fixed")
    return bo.va   # the backing memory is already there

  def munmap(self, addr: int, size: int):
    if any(ctypes.addressof(p) == addr for p in self.doorbell_pages.values()): return
    self.host.munmap(addr, size)

  def doorbell(self, addr: int, value: int):
    ctypes.c_uint64.from_address(addr).value = value
    for q in self.queues.values():
      page = self.doorbell_pages.get(q.gpu.gpu_id)
      if page is not None and ctypes.addressof(page) + q.doorbell_slot * 8 == addr:
        try: q.ring(value)
        except SimFault as f: q.halted, self.hw_fault = str(f), (f.gpu_id, 0, str(f))
        return
    raise OSError(errno.EFAULT, f"a doorbell write to {addr:#x}, which is no queue's doorbell")
