"""Every OS access of the AMD driver goes through one object: open/close, ioctl, mmap/munmap, sysfs
reads, and the doorbell store (a write to a page the kernel mapped, the one memory access that is
not plain memory). `LinuxOs` does them with real system calls; the simulator (sim/) is another
object with the same methods, chosen by TRAINER_AMD_SIM (see `system`)."""
from __future__ import annotations
import ctypes, ctypes.util, os

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value


class Seam:
  """What the driver calls on the OS. Subclasses supply the system calls: LinuxOs (the real kernel)
  and sim.kernel.SimKernel (the simulated one), whose `sys_ioctl` is the kernel's side of an ioctl."""
  def ioctl(self, fd: int, request: int, arg: ctypes.Structure) -> ctypes.Structure:
    """The ioctl, restarted when a signal interrupts it (EINTR), as libhsakmt's kmtIoctl does: Python's
    handlers are installed without SA_RESTART and PEP 475's retries cover os.* calls, not ctypes ones."""
    while True:
      try: return self.sys_ioctl(fd, request, arg)
      except InterruptedError: continue


class LinuxOs(Seam):
  """The real kernel: libc's ioctl and mmap through ctypes, sysfs through files."""
  def __init__(self):
    self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    self.libc.mmap.restype = ctypes.c_void_p
    self.libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    self.libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

  def open(self, path: str, flags: int) -> int: return os.open(path, flags)
  def close(self, fd: int): os.close(fd)

  def sys_ioctl(self, fd: int, request: int, arg: ctypes.Structure) -> ctypes.Structure:
    """The ioctl on `arg` (a ctypes struct, filled in place); an error raises OSError with its errno."""
    if self.libc.ioctl(fd, request, ctypes.addressof(arg)) < 0:
      e = ctypes.get_errno()
      raise OSError(e, f"ioctl {request:#x}: {os.strerror(e)}")
    return arg

  def mmap(self, addr: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    r = self.libc.mmap(addr or None, size, prot, flags, fd, offset)
    if r in (None, MAP_FAILED):
      e = ctypes.get_errno()
      raise OSError(e, f"mmap of {size} bytes at offset {offset:#x}: {os.strerror(e)}")
    return r

  def munmap(self, addr: int, size: int):
    if self.libc.munmap(addr, size) != 0: raise OSError(ctypes.get_errno(), f"munmap {addr:#x}")

  def read_text(self, path: str) -> str:
    with open(path) as f: return f.read()

  def listdir(self, path: str) -> list[str]: return sorted(os.listdir(path))
  def exists(self, path: str) -> bool: return os.path.exists(path)
  def doorbell(self, addr: int, value: int): ctypes.c_uint64.from_address(addr).value = value


_system = None


def system():
  """The process's OS object: the simulator when TRAINER_AMD_SIM names GPU kinds or machines (e.g.
  'gfx942,gfx942' or 'mi300x'), else the real kernel. One per process, as KFD state is per process."""
  global _system
  if _system is None:
    kinds = os.environ.get("TRAINER_AMD_SIM")
    if kinds:
      from .sim.kernel import SimKernel
      _system = SimKernel([k.strip() for k in kinds.split(",") if k.strip()])
    else: _system = LinuxOs()
  return _system


def reset():
  """Forget the process's OS object (tests choose another simulated machine after this)."""
  global _system
  _system = None
