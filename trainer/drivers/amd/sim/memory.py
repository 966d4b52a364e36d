"""The simulated GPU memory: buffer objects and per-GPU page tables, as amdgpu and KFD keep them.

Each BO is backed by shared host memory (its alias, where the engines read and write it). At its
virtual address the BO is also present in the process, but PROT_NONE, as a BO no render-node mmap
has put there is on real hardware (the driver's VA reservation): the CPU touching VRAM it never
mapped faults. The render-node mmap makes the VA readable and writable; a kernel dispatch opens the
VA of its buffer arguments for the time it runs (the simulated shaders dereference GPU addresses).

A GPU page table is a sorted list of mappings (start, end, BO, offset into the BO), each with the
BO's permissions, as `get_pte_flags` (amdgpu_amdkfd_gpuvm.c) derives them: always readable, WRITABLE
and EXECUTABLE from the allocation flags. An AQL_QUEUE_MEM allocation is the GFX7/8 wrap-around
workaround that `amdgpu_amdkfd_gpuvm_alloc_memory_of_gpu` applies on every GPU: the BO holds half
the requested bytes, and `kfd_mem_attach(..., is_aql)` maps it twice, at va and va + size/2."""
from __future__ import annotations
import bisect, ctypes, ctypes.util, os
from dataclasses import dataclass, field
from ..kfd import MEM_WRITABLE, MEM_EXECUTABLE, MEM_AQL_QUEUE_MEM

PAGE = 4096
PROT_NONE, PROT_RW = 0, 3
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = _libc.mremap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _check(r, what: str):
  if r in (None, ctypes.c_void_p(-1).value) or r == -1:
    e = ctypes.get_errno()
    raise OSError(e, f"the simulator's {what}: {os.strerror(e)}")
  return r


def host_alloc(size: int) -> int:
  """Shared anonymous host memory (zeroed), the backing of a BO."""
  return _check(_libc.mmap(None, size, PROT_RW, MAP_SHARED | MAP_ANONYMOUS, -1, 0), "mmap")


def host_free(addr: int, size: int): _check(_libc.munmap(addr, size), "munmap")
def protect(addr: int, size: int, prot: int): _check(_libc.mprotect(addr, size, prot), "mprotect")
def reserve(addr: int, size: int, prot: int, flags: int):
  return _check(_libc.mmap(addr or None, size, prot, flags, -1, 0), "mmap")


@dataclass(eq=False)
class SimBo:
  handle: int
  va: int
  size: int                  # bytes asked for (the VA range it occupies)
  backing: int               # bytes of memory it holds (half the size for AQL_QUEUE_MEM)
  gpu_id: int
  flags: int
  mmap_offset: int
  alias: int                 # host address of its memory
  mapped: set = field(default_factory=set)   # gpu_ids whose page tables map it
  cpu: bool = False          # made CPU-accessible at its VA by a render-node mmap

  @classmethod
  def create(cls, handle: int, va: int, size: int, gpu_id: int, flags: int):
    backing = -(-(size >> 1) // PAGE) * PAGE if flags & MEM_AQL_QUEUE_MEM else size
    bo = cls(handle, va, size, backing, gpu_id, flags, handle << 20, host_alloc(backing))
    # the VA holds the same memory, inaccessible to the CPU until mmapped (replaces the driver's reservation there)
    _check(_libc.mremap(bo.alias, 0, backing, MREMAP_MAYMOVE | MREMAP_FIXED, va), "mremap")
    protect(va, backing, PROT_NONE)
    return bo

  def mappings(self) -> list[tuple[int, int, int]]:
    """(start, end, offset into the backing) of its GPU mappings: twice the half-size BO for AQL_QUEUE_MEM."""
    if self.flags & MEM_AQL_QUEUE_MEM: return [(self.va + i * self.backing, self.va + (i + 1) * self.backing, 0) for i in range(2)]
    return [(self.va, self.va + self.size, 0)]

  def release(self):
    """FREE: the memory goes (the VA stays the driver's, which unmaps it)."""
    reserve(self.va, self.backing, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE)
    host_free(self.alias, self.backing)


class MemoryFault(Exception):
  """A GPU access the page table refuses: kind is KFD's failure name (NotPresent, ReadOnly, NoExecute)."""
  def __init__(self, gpu_id: int, va: int, kind: str, msg: str):
    super().__init__(msg)
    self.gpu_id, self.va, self.kind = gpu_id, va, kind


class PageTable:
  """One GPU's mappings, sorted by start."""
  def __init__(self, gpu_id: int):
    self.gpu_id, self.starts, self.maps = gpu_id, [], []

  def add(self, bo: SimBo):
    for start, end, off in bo.mappings():
      i = bisect.bisect(self.starts, start)
      self.starts.insert(i, start); self.maps.insert(i, (start, end, bo, off))

  def remove(self, bo: SimBo):
    keep = [(s, m) for s, m in zip(self.starts, self.maps) if m[2] is not bo]
    self.starts, self.maps = [s for s, _ in keep], [m for _, m in keep]

  def lookup(self, va: int):
    """The mapping holding va, or None (amdgpu_vm_bo_lookup_mapping)."""
    i = bisect.bisect(self.starts, va) - 1
    return self.maps[i] if i >= 0 and va < self.maps[i][1] else None

  def access(self, va: int, n: int, what: str, write: bool = False, execute: bool = False) -> int:
    """The host address of [va, va+n) for an engine of this GPU; a fault unless one mapping holds it
    with the permission asked for."""
    m = self.lookup(va)
    if m is None or va + n > m[1]:
      raise MemoryFault(self.gpu_id, va, "NotPresent", f"{what} at {va:#x} ({n} bytes) on gpu_id {self.gpu_id}: not mapped on this GPU")
    start, _, bo, off = m
    if write and not bo.flags & MEM_WRITABLE:
      raise MemoryFault(self.gpu_id, va, "ReadOnly", f"{what} at {va:#x} on gpu_id {self.gpu_id}: a write to a buffer without WRITABLE")
    if execute and not bo.flags & MEM_EXECUTABLE:
      raise MemoryFault(self.gpu_id, va, "NoExecute", f"{what} at {va:#x} on gpu_id {self.gpu_id}: fetched from a buffer without EXECUTABLE")
    return bo.alias + off + (va - start)


class CpuWindow:
  """The VAs of GPU-only buffers opened to the host for the time a simulated kernel runs."""
  def __init__(self, bos):
    self.bos = [b for b in {id(b): b for b in bos}.values() if not b.cpu]

  def __enter__(self):
    for b in self.bos: protect(b.va, b.backing, PROT_RW)
  def __exit__(self, *exc):
    for b in self.bos: protect(b.va, b.backing, PROT_NONE)
