"""Bring-up: the process's KFD state (`Process`: /dev/kfd, the ioctl version, the topology, each
GPU's VM acquired through its render node, memory, signals) and one GPU (`Gpu`: a compute (AQL)
queue, an SDMA queue, code objects loaded into its memory, kernel dispatch with kernel arguments laid
out as the code object's metadata says). No scratch (private segment) memory is set up: a kernel
that needs it is refused at launch; the kernels our codegen writes need none."""
from __future__ import annotations
import ctypes, os, struct
from dataclasses import dataclass
from . import kfd, topology
from .aql import AqlQueue
from .elf import CodeObject, CODE_ALIGN
from .memory import Memory
from .os_seam import PROT_READ, PROT_WRITE, MAP_SHARED, system
from .sdma import SdmaQueue
from .signals import Signals

KFD_PATH = "/dev/kfd"
RENDER_PATH = "/dev/dri/renderD{minor}"
VRAM = kfd.MEM_VRAM | kfd.MEM_WRITABLE
CODE = kfd.MEM_VRAM | kfd.MEM_WRITABLE | kfd.MEM_EXECUTABLE
HOST = kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED


class Process:
  def __init__(self, os_=None):
    self.os = os_ = os_ or system()
    try: self.kfd_fd = os_.open(KFD_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e: raise kfd.AmdError(f"cannot open {KFD_PATH}: {e.strerror} (no amdgpu kernel driver, or no permission: group 'render')") from None
    v = os_.ioctl(self.kfd_fd, kfd.GET_VERSION, kfd.get_version_args())
    self.version = (v.major_version, v.minor_version)
    if v.major_version != kfd.MIN_MAJOR_VERSION: raise kfd.AmdError(f"KFD ioctl version {v.major_version}.{v.minor_version}: 1.x needed")
    self.gpus = topology.usable(topology.read_gpus(os_))
    self.render_fds = {}
    for g in self.gpus:
      path = RENDER_PATH.format(minor=g.render_minor)
      self.render_fds[g.gpu_id] = fd = os_.open(path, os.O_RDWR | os.O_CLOEXEC)
      os_.ioctl(self.kfd_fd, kfd.ACQUIRE_VM, kfd.acquire_vm_args(drm_fd=fd, gpu_id=g.gpu_id))
    if self.gpus and v.minor_version >= kfd.RUNTIME_ENABLE_MINOR:   # as ROCr: enabled (a zero mask disables), once the VMs exist
      os_.ioctl(self.kfd_fd, kfd.RUNTIME_ENABLE, kfd.runtime_enable_args(mode_mask=kfd.RUNTIME_ENABLE_MODE_ENABLE))
    self.memory = Memory(os_, self.kfd_fd, self.render_fds)
    self.signals = Signals(os_, self.kfd_fd, self.memory, [g.gpu_id for g in self.gpus], self.drain) if self.gpus else None
    self.devices, self.doorbell_pages = {}, {}

  def device(self, index: int) -> Gpu:
    """AMD:index, brought up on first use; a GPU that failed to come up fails again with the same error."""
    if index >= len(self.gpus): raise kfd.AmdError(f"AMD:{index}: no such GPU (KFD lists {len(self.gpus)} this driver supports)")
    if index not in self.devices:
      try: self.devices[index] = Gpu(self, self.gpus[index])
      except kfd.AmdError as e:
        self.devices[index] = e
        raise
    d = self.devices[index]
    if isinstance(d, Exception): raise d
    return d

  def drain(self):
    """Wait until every queue of every GPU has finished what it was given."""
    for d in self.devices.values():
      if isinstance(d, Gpu): d.drain()


@dataclass
class Program:
  """A kernel loaded on one GPU."""
  gpu: Gpu
  name: str
  kd_va: int
  meta: dict


class Gpu:
  def __init__(self, proc: Process, gpu: topology.Gpu):
    self.proc, self.gpu, self.os, self.kfd_fd = proc, gpu, proc.os, proc.kfd_fd
    self.memory, self.signals = proc.memory, proc.signals
    self.compute = AqlQueue(self)
    try: self.copies = SdmaQueue(self)
    except BaseException:
      self.compute.destroy()
      raise
    self.drained = (self.signals.new(), self.signals.new())   # the markers `drain` waits for, owned
    self.code = []   # code object buffers, kept for the life of the GPU

  @property
  def peers(self) -> list[int]: return [g.gpu_id for g in self.proc.gpus]

  def doorbell(self, offset: int) -> int:
    """The CPU address of a queue's doorbell: its 8 KiB doorbell page mapped once per GPU."""
    page = offset & ~(kfd.DOORBELL_PAGE_BYTES - 1)
    if page not in self.proc.doorbell_pages:
      self.proc.doorbell_pages[page] = self.os.mmap(0, kfd.DOORBELL_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, self.kfd_fd, page)
    return self.proc.doorbell_pages[page] + (offset & (kfd.DOORBELL_PAGE_BYTES - 1))

  def alloc(self, nbytes: int, host: bool = False):
    """Device memory (VRAM) mapped on this GPU; `host`: CPU-visible uncached system memory instead."""
    return self.memory.alloc(nbytes, self.gpu.gpu_id, HOST if host else VRAM, cpu=host)

  def load(self, image: bytes) -> dict[str, Program]:
    """Load a code object into VRAM (ROCr's loader keeps a dGPU's code in local memory: the GPU's
    instruction fetches never cross PCIe): its file first (so the descriptor address of a kernel can be
    resolved from GPU memory alone, by a debugger or the simulator), then the image as loaded,
    relocated, 256-aligned; written through a host buffer and an SDMA copy (the CPU does not map VRAM)."""
    co = CodeObject(image)
    if not co.target.endswith(self.gpu.target) and f"{self.gpu.target}:" not in co.target:
      raise kfd.AmdError(f"code object for {co.target} on a {self.gpu.target} GPU")
    base_off = -(-len(co.image) // CODE_ALIGN) * CODE_ALIGN
    img = co.loaded()
    size = base_off + len(img)
    with self.memory.transaction() as bos:
      bos.append(bo := self.memory.alloc(size, self.gpu.gpu_id, CODE))
      staging = self.memory.alloc(size, self.gpu.gpu_id, HOST, cpu=True)
      try:
        for off, addend in co.relocations(): struct.pack_into("<Q", img, off, bo.va + base_off + addend)
        ctypes.memmove(staging.va, co.image, len(co.image))
        ctypes.memmove(staging.va + base_off, bytes(img), len(img))
        self.copies.copy(bo.va, staging.va, size)
        done = self.mark_copies()
        self.signals.wait(done, "the upload of a code object")
        self.signals.release(done)
      finally: self.memory.free(staging)
    self.code.append(bo)
    return {name: Program(self, name, bo.va + base_off + k.kd_offset, k.meta) for name, k in co.kernels.items()}

  def launch(self, prog: Program, args: list[int], groups: tuple, block: tuple):
    """Dispatch prog with `args` (buffer addresses or integers, in the kernel's parameter order)."""
    m = prog.meta
    ka = bytearray(m[".kernarg_segment_size"])
    explicit = [a for a in m.get(".args", []) if not a[".value_kind"].startswith("hidden_")]
    if len(explicit) != len(args): raise kfd.AmdError(f"{prog.name}: {len(args)} arguments for {len(explicit)} parameters")
    for a, v in zip(explicit, args): ka[a[".offset"]:a[".offset"] + a[".size"]] = int(v).to_bytes(a[".size"], "little", signed=int(v) < 0)
    for a in m.get(".args", []):
      hv = _hidden(a[".value_kind"], groups, block)
      if hv is not None: ka[a[".offset"]:a[".offset"] + a[".size"]] = hv.to_bytes(a[".size"], "little")
    if prod(block) > m.get(".max_flat_workgroup_size", 1024): raise kfd.AmdError(f"{prog.name}: work-group of {prod(block)} (max {m['.max_flat_workgroup_size']})")
    if m[".private_segment_fixed_size"] or m.get(".uses_dynamic_stack"):   # no scratch memory is set up for the queue
      raise kfd.AmdError(f"{prog.name}: needs {m['.private_segment_fixed_size']} bytes of scratch per work-item; this driver sets up none")
    self.compute.dispatch(prog.kd_va, bytes(ka), groups, block, m[".group_segment_fixed_size"], m[".private_segment_fixed_size"])

  # -- ordering: a signal completes when the work queued before it has finished; `interrupt`: a CPU will
  # sleep on it (a signal only GPUs wait for raises no interrupt)
  def mark_compute(self, interrupt: bool = True) -> int:
    s = self.signals.new(interrupt); self.compute.barrier(signal=s); return s

  def mark_copies(self, interrupt: bool = True) -> int:
    s = self.signals.new(interrupt); self.copies.signal(s, interrupt); self.copies.submit(); return s

  def drain(self):
    """Wait until both queues have finished every packet given: a marker on each, completed (read
    pointers only say a packet was fetched or launched)."""
    c, s = self.drained
    for sig in (c, s): self.signals.reset(sig)
    self.compute.barrier(signal=c)
    self.copies.signal(s); self.copies.submit()
    for sig, q in ((c, "compute"), (s, "SDMA")): self.signals.wait(sig, f"the {q} queue of {self.gpu.target} gpu_id {self.gpu.gpu_id}")


def _hidden(kind: str, groups, block):
  """Values of the code object v5 hidden arguments we fill (others are 0)."""
  axes = "xyz"
  for i, ax in enumerate(axes):
    if kind == f"hidden_block_count_{ax}": return groups[i]
    if kind == f"hidden_group_size_{ax}": return block[i]
    if kind == f"hidden_remainder_{ax}": return 0
  if kind == "hidden_grid_dims": return 3
  return None


def prod(xs):
  n = 1
  for x in xs: n *= x
  return n


_process = None


def process() -> Process:
  """This process's KFD state (made on first use)."""
  global _process
  if _process is None: _process = Process()
  return _process


def reset():
  """Forget the process state (tests switch simulated machines)."""
  global _process
  _process = None
