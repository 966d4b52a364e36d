"""The CPU runtime: buffers are host memory, kernels are C compiled by the system compiler (`cc`,
-O3 -march=native, OpenMP for both cores), cached on disk by source hash and loaded with ctypes.
No multiply-add contraction (-ffp-contract=off): a kernel's values must not depend on where the scheduler
cut the graph; the matrix product's micro-kernel asks for contraction itself (codegen/gemm.py).
Without a C compiler it falls back to the numpy interpreter and says so once."""
from __future__ import annotations
import concurrent.futures, ctypes, functools, hashlib, os, shutil, subprocess, tempfile, warnings
import numpy as np
from .host import HostRuntime
from ..device import register
from ..codegen import cpu as cpu_codegen

CC = os.environ.get("CC", "cc")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", "-fwrapv", "-fno-trapping-math",
         "-ffp-contract=off", "-fno-semantic-interposition"]
CACHE = os.path.join(os.environ.get("TRAINER_CACHE", os.path.expanduser("~/.cache/trainer")), "cpu")
_loaded: dict[str, object] = {}


def compile_c(src: str) -> ctypes.CDLL:
  """Compile C source to a shared object (cached on disk by hash of source and flags) and load it."""
  key = hashlib.sha256((src + " ".join(FLAGS) + CC).encode()).hexdigest()[:24]
  if key in _loaded: return _loaded[key]
  path = os.path.join(CACHE, f"{key}.so")
  if not os.path.exists(path):
    os.makedirs(CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=CACHE); os.close(fd)
    r = subprocess.run([CC, *FLAGS, "-x", "c", "-", "-o", tmp], input=src.encode(), capture_output=True)
    if r.returncode != 0:
      os.unlink(tmp)
      raise RuntimeError(f"C compiler failed on a generated kernel:\n{r.stderr.decode()[-3000:]}\n--- source ---\n{src[-4000:]}")
    os.replace(tmp, path)
  lib = _loaded[key] = ctypes.CDLL(path)
  return lib


class Program:
  __slots__ = ("fn", "name")
  def __init__(self, fn, name): self.fn, self.name = fn, name
  def __call__(self, *handles): self.fn(*[h.ctypes.data for h in handles])
  def bind(self, *handles):
    """A zero-argument call with the buffer addresses fixed (the JIT's replay unit)."""
    return functools.partial(self.fn, *[h.ctypes.data for h in handles])


class CPURuntime(HostRuntime):
  def __init__(self, name: str):
    super().__init__(name)
    if shutil.which(CC) is None:
      warnings.warn(f"no C compiler ({CC!r}) found: the CPU backend runs on the slow numpy interpreter")
      from .interp import InterpRuntime
      interp = InterpRuntime(name)
      self.compile = interp.compile   # type: ignore[method-assign]
      self.compile_many = lambda kernels, names: [interp.compile(k, n) for k, n in zip(kernels, names)]   # type: ignore[method-assign]

  def compile_custom(self, kernel, name: str, outs, inputs):
    if not hasattr(kernel, "render_c"): return super().compile_custom(kernel, name, outs, inputs)
    fn = getattr(compile_c(kernel.render_c(name)), name)
    fn.restype, fn.argtypes = None, [ctypes.c_void_p] * (len(outs) + len(inputs))
    return Program(fn, name)

  def compile(self, kernel, name: str): return self.compile_many([kernel], [name])[0]

  def compile_many(self, kernels, names) -> list:
    """Programs for several kernels, their C compiled side by side (one compiler per core: a compile is mostly a
    process waiting on gcc)."""
    srcs = [cpu_codegen.render(k, n) for k, n in zip(kernels, names)]
    if len(srcs) == 1: libs = [compile_c(srcs[0])]
    else:
      with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool: libs = list(pool.map(compile_c, srcs))
    progs = []
    for lib, k, name in zip(libs, kernels, names):
      fn = getattr(lib, name)
      fn.restype = None
      fn.argtypes = [ctypes.c_void_p] * (1 + len(k.inputs))
      progs.append(Program(fn, name))
    return progs


def _make(device: str, index: int):
  if os.environ.get("TRAINER_CPU_BACKEND", "").lower() == "interp":
    from .interp import InterpRuntime
    return InterpRuntime(device)
  return CPURuntime(device)


register("CPU", _make, lambda: int(os.environ.get("TRAINER_CPU_DEVICES", "8")))
