"""GPU memory of one process: buffer objects (KFD ALLOC_MEMORY_OF_GPU) at virtual addresses we
choose, CPU-mapped at the same address where the CPU may touch them (CPU VA == GPU VA), and mapped
into the page tables of one or several GPUs (MAP_MEMORY_TO_GPU: a peer mapping is one more gpu_id)."""
from __future__ import annotations
import contextlib, ctypes, errno
from dataclasses import dataclass, field
from . import kfd
from .os_seam import PROT_NONE, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE

PAGE = 4096                  # bytes: the unit of BO sizes
LARGE_ALIGN = 2 << 20        # bytes: VA alignment of BOs of at least this size (2 MiB GPU page fragments)


@dataclass(eq=False)
class Bo:
  va: int
  size: int
  handle: int
  gpu_id: int
  flags: int
  reserved: tuple            # (address, size) of the CPU VA reservation that holds it
  cpu: bool                  # mapped for the CPU at va
  mapped: list = field(default_factory=list)   # gpu_ids whose page tables map it

  def view(self, offset: int = 0, size: int | None = None):
    """The CPU's view of [offset, offset+size) as a ctypes char array."""
    assert self.cpu, "this buffer is not CPU-visible"
    return kfd.array_type(ctypes.c_char, self.size - offset if size is None else size).from_address(self.va + offset)


class Memory:
  def __init__(self, os_, kfd_fd: int, render_fds: dict):
    self.os, self.fd, self.render_fds = os_, kfd_fd, render_fds   # render_fds: gpu_id -> fd of its render node

  def alloc(self, size: int, gpu_id: int, flags: int, cpu: bool = False, gpus=None) -> Bo:
    """A BO of `size` bytes (rounded up to pages) of type `flags` (kfd.MEM_*), mapped to `gpus`
    (default: its own GPU) and, if `cpu`, for the CPU at the same address."""
    size = -(-max(size, 1) // PAGE) * PAGE
    align = LARGE_ALIGN if size >= LARGE_ALIGN else PAGE
    res = self.os.mmap(0, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    va = -(-res // align) * align
    a = kfd.alloc_memory_of_gpu_args(va_addr=va, size=size, gpu_id=gpu_id, flags=flags)
    try: self.os.ioctl(self.fd, kfd.ALLOC_MEMORY_OF_GPU, a)
    except OSError as e:
      self.os.munmap(res, size + align)
      kind = "VRAM" if flags & kfd.MEM_VRAM else "GTT" if flags & kfd.MEM_GTT else "memory"
      err = kfd.OutOfDeviceMemory if e.errno == errno.ENOMEM else kfd.AmdError
      raise err(f"ALLOC_MEMORY_OF_GPU of {size} bytes of {kind} on gpu_id {gpu_id} failed: {e.strerror}") from None
    bo = Bo(va, size, a.handle, gpu_id, flags, (res, size + align), cpu)
    try:
      if cpu:
        try: self.os.mmap(va, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, self.render_fds[gpu_id], a.mmap_offset)
        except OSError as e: raise kfd.AmdError(f"mmap of the {size}-byte buffer at {va:#x} (gpu_id {gpu_id}) for the CPU failed: {e.strerror}") from None
      self.map(bo, gpus or [gpu_id])
    except BaseException:   # the CPU or GPU mapping failed: give the buffer back
      self.free(bo)
      raise
    return bo

  @contextlib.contextmanager
  def transaction(self):
    """A list to put buffers in: if the block raises, they are freed (newest first)."""
    bos = []
    try: yield bos
    except BaseException:
      for bo in reversed(bos): self.free(bo)
      raise

  def map(self, bo: Bo, gpus):
    """Map bo into these GPUs' page tables too (those that have it already are skipped)."""
    new = [g for g in gpus if g not in bo.mapped]
    if not new: return
    ids = kfd.array_type(ctypes.c_uint32, len(new))(*new)
    a = kfd.map_memory_to_gpu_args(handle=bo.handle, device_ids_array_ptr=ctypes.addressof(ids), n_devices=len(new))
    try: self.os.ioctl(self.fd, kfd.MAP_MEMORY_TO_GPU, a)
    except OSError as e:
      bo.mapped += new[:a.n_success]
      raise kfd.AmdError(f"MAP_MEMORY_TO_GPU of the buffer at {bo.va:#x} (on gpu_id {bo.gpu_id}) to gpu_ids {new} failed after "
                         f"{a.n_success} of them: {e.strerror} (is the peer reachable over XGMI or PCIe P2P?)") from None
    bo.mapped += new

  def free(self, bo: Bo):
    if bo.mapped:
      ids = kfd.array_type(ctypes.c_uint32, len(bo.mapped))(*bo.mapped)
      self.os.ioctl(self.fd, kfd.UNMAP_MEMORY_FROM_GPU, kfd.unmap_memory_from_gpu_args(
        handle=bo.handle, device_ids_array_ptr=ctypes.addressof(ids), n_devices=len(bo.mapped)))
      bo.mapped = []
    self.os.ioctl(self.fd, kfd.FREE_MEMORY_OF_GPU, kfd.free_memory_of_gpu_args(handle=bo.handle))
    self.os.munmap(*bo.reserved)
