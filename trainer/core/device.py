"""Devices and buffers. A device is named `BACKEND:N` (CPU:0, CUDA:1, AMD:3); each name maps to one
runtime object that implements the small Runtime interface below. Several CPU devices exist at once
(each a separate memory space in this process) so every multi-device path runs without a GPU.
This module imports no backend: each backend's module registers itself by name (`register`) when
trainer.core.runtime.load imports it, on the first use of a device of that backend.

Environment: TRAINER_DEVICE sets the default device (default CPU:0); TRAINER_CPU_BACKEND=interp
makes the CPU devices use the numpy interpreter instead of compiled C. `set_cpu_backend` switches it
at run time (tests run every op on both): CPU runtimes made after the call use the chosen backend.
TRAINER_MEMORY_LIMIT=BYTES caps the memory of live buffers on every device (a test aid: it makes an
out-of-memory error happen on purpose).

Every Buffer counts its bytes on its runtime (`in_use`, and the most ever, `peak_in_use`), so peaks are
measured the same way on every backend; an allocation that does not fit raises OutOfMemoryError.
"""
from __future__ import annotations
import itertools, os
import numpy as np
from .dtypes import DType, to_storage


class OutOfMemoryError(MemoryError):
  """An allocation that does not fit on a device; `what` names the buffer's use where the caller knows it."""
  def __init__(self, device: str, nbytes: int, in_use: int, limit: int | None = None, what: str = ""):
    super().__init__(device, nbytes)
    self.device, self.nbytes, self.in_use, self.limit, self.what = device, nbytes, in_use, limit, what

  def __str__(self) -> str:
    cap = f" of {format_bytes(self.limit)}" if self.limit else ""
    return (f"out of memory on {self.device}: {format_bytes(self.nbytes)}{' for ' + self.what if self.what else ''} "
            f"with {format_bytes(self.in_use)}{cap} in use")


def format_bytes(n: float) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size: return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


MEMORY_LIMIT = int(os.environ.get("TRAINER_MEMORY_LIMIT", "0")) or None   # bytes of live buffers per device


class Runtime:
  """What a backend provides. Handles are opaque to everything above this layer."""
  name: str
  device_name = ""           # the device's model as its vendor names it ('NVIDIA H200', 'AMD Instinct MI300X'), '' if unknown
  in_use = peak_in_use = 0   # bytes of live Buffers (counted by Buffer), and the most ever
  def alloc(self, nbytes: int): raise NotImplementedError
  def free(self, handle): pass
  def copyin(self, handle, data: np.ndarray): raise NotImplementedError        # host -> device
  def copyout(self, handle, nbytes: int) -> bytes | np.ndarray: raise NotImplementedError   # device -> host (raw bytes)
  def copy_peer(self, dst_rt: Runtime, dst, src, nbytes: int): raise NotImplementedError   # device -> other device
  def compile(self, kernel, name: str): raise NotImplementedError            # Kernel -> callable(out, *inputs)
  def compile_custom(self, kernel, name: str, outs, inputs):   # custom.CustomKernel, (shape, dtype) per output -> callable(*outs, *inputs)
    from .custom import HostProgram
    return HostProgram(self, kernel, outs, inputs)
  def synchronize(self): pass
  # what the collectives (parallel/ring.py) build on: byte ranges of buffers, copies on a copy stream
  # ordered by events, and an in-place reduction kernel. Host runtimes do all of it synchronously.
  def view(self, handle, offset: int, nbytes: int): raise NotImplementedError   # a handle to bytes [offset, offset+nbytes)
  def mark(self): return None                                    # an event after the work queued so far
  def wait(self, events): pass                                   # later work waits for these events
  def copy_async(self, src_rt: Runtime, dst, src, nbytes: int, after=()):
    """Copy src (on src_rt) into dst (here) once the `after` events have happened; returns its event."""
    src_rt.copy_peer(self, dst, src, nbytes)
  def accumulate(self, dst, src, n: int, dtype: DType, op: str, scale: float | None = None):
    """dst[i] = op(dst[i], src[i]) for n elements (op 'sum' or 'max'), times scale if given."""
    raise NotImplementedError
  def release(self, events): pass                                # events no later call will wait for


_uids = itertools.count()


class Buffer:
  """Memory for `size` elements of `dtype` on `device`; `uid` names it for its whole life (ids get reused)."""
  def __init__(self, device: str, size: int, dtype: DType):
    self.device, self.size, self.dtype, self.uid = device, size, dtype, next(_uids)
    rt = self.runtime = get_runtime(device)
    self.nbytes = size * dtype.itemsize
    if MEMORY_LIMIT is not None and rt.in_use + self.nbytes > MEMORY_LIMIT:
      raise OutOfMemoryError(device, self.nbytes, rt.in_use, MEMORY_LIMIT)
    self.handle = rt.alloc(self.nbytes)
    rt.in_use += self.nbytes
    if rt.in_use > rt.peak_in_use: rt.peak_in_use = rt.in_use

  def __del__(self):
    if getattr(self, "handle", None) is not None:
      self.runtime.free(self.handle)
      self.runtime.in_use -= self.nbytes

  def copyin(self, arr: np.ndarray) -> Buffer:
    data = to_storage(arr, self.dtype).reshape(-1)
    assert data.size == self.size, (data.size, self.size)
    self.runtime.copyin(self.handle, data)
    return self

  def numpy(self) -> np.ndarray:
    """Storage-typed copy of the contents (bfloat16 as uint16 words)."""
    raw = self.runtime.copyout(self.handle, self.nbytes)
    return np.frombuffer(raw, dtype=self.dtype.np, count=self.size).copy()

  def copy_from_peer(self, src: Buffer):
    src.runtime.copy_peer(self.runtime, self.handle, src.handle, self.nbytes)


_runtimes: dict[str, Runtime] = {}
_backends: dict[str, tuple] = {}   # name -> (make(device, index) -> Runtime, count() -> int), filled by register


def register(name: str, make, count):
  """Called by a backend's module when it is imported: `make(device, index)` builds the Runtime of
  device 'NAME:index', `count()` says how many devices this host has (0, never an error, without one)."""
  _backends[name] = (make, count)


def _backend(name: str) -> tuple:
  if name not in _backends:
    from . import runtime
    runtime.load(name)
  return _backends[name]


def canonical(device: str | None) -> str:
  """'cpu' -> 'CPU:0', 'CUDA' -> 'CUDA:0'; unknown backends are a clear error."""
  from .runtime import BACKENDS
  if device is None: device = os.environ.get("TRAINER_DEVICE", "CPU:0")
  name, _, idx = str(device).upper().partition(":")
  if name not in BACKENDS: raise ValueError(f"unknown device {device!r}: expected one of {', '.join(b + ':N' for b in BACKENDS)}")
  if idx and not idx.isdigit(): raise ValueError(f"bad device index in {device!r}")
  return f"{name}:{int(idx or 0)}"


def set_cpu_backend(backend: str):
  """'c' (compiled C, the default) or 'interp' (numpy interpreter) for the CPU devices from now on.
  Existing buffers keep working: both CPU runtimes keep host memory as numpy byte arrays."""
  if backend not in ("c", "interp"): raise ValueError(f"unknown CPU backend {backend!r}: expected 'c' or 'interp'")
  os.environ["TRAINER_CPU_BACKEND"] = backend
  for d in [d for d in _runtimes if d.startswith("CPU:")]: del _runtimes[d]


def get_runtime(device: str) -> Runtime:
  device = canonical(device)
  if device not in _runtimes:
    backend, idx = device.split(":")
    _runtimes[device] = _backend(backend)[0](device, int(idx))
  return _runtimes[device]


def device_count(backend: str) -> int:
  """How many devices of a backend this host has (CPU: TRAINER_CPU_DEVICES, default 8 virtual ones)."""
  return _backend(backend.upper())[1]()
