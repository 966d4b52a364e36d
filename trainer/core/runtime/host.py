"""What the two CPU runtimes share: device memory is host memory, a numpy byte array per buffer (so
buffers made under one CPU backend work under the other), freed arrays kept for reuse by size, and
the collectives' primitives done at once (a copy is finished when it returns; there are no streams)."""
from __future__ import annotations
import functools
import numpy as np
from ..device import Runtime
from ..dtypes import DType, dtypes, bf16_to_f32, f32_to_bf16

POOL_BYTES = 1 << 30   # freed host buffers kept for reuse, per device


@functools.cache
def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo ('' where it is not there)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError: return ""


class HostRuntime(Runtime):
  def __init__(self, name: str): self.name, self.pool, self.pooled, self.device_name = name, {}, 0, cpu_model()

  def alloc(self, nbytes):
    # reuse a freed buffer of the same size: fresh memory costs a page fault per 4 KiB on first touch
    free = self.pool.get(nbytes)
    if free:
      self.pooled -= nbytes
      return free.pop()
    return np.empty(max(nbytes, 1), dtype=np.uint8)

  def free(self, handle):
    if handle.base is None and self.pooled + handle.nbytes <= POOL_BYTES:
      self.pool.setdefault(handle.nbytes, []).append(handle); self.pooled += handle.nbytes

  def copyin(self, handle, data): handle[:data.nbytes] = np.frombuffer(np.ascontiguousarray(data).data, dtype=np.uint8)
  def copyout(self, handle, nbytes): return handle[:nbytes]
  def copy_peer(self, dst_rt, dst, src, nbytes):
    if isinstance(dst, np.ndarray): np.copyto(dst[:nbytes], src[:nbytes])
    else: dst_rt.copyin(dst, src[:nbytes])
  def view(self, handle, offset, nbytes): return handle[offset:offset + nbytes]

  def accumulate(self, dst, src, n: int, dtype: DType, op: str, scale: float | None = None):
    """As the CUDA kernel computes it: floats in float32 rounded once, integers wrapping, bool as or."""
    a, b = (h[:n * dtype.itemsize].view(dtype.np) for h in (dst, src))
    def wide(x): return bf16_to_f32(x) if dtype is dtypes.bfloat16 else x.astype(np.float32) if dtype.is_float else x
    with np.errstate(over="ignore", invalid="ignore"):
      r = np.maximum(wide(a), wide(b)) if op == "max" or dtype is dtypes.bool else wide(a) + wide(b)
      if scale is not None: r = r.astype(np.float32) * np.float32(scale)
    a[...] = f32_to_bf16(r) if dtype is dtypes.bfloat16 else r.astype(dtype.np)
