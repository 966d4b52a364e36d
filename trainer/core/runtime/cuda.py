"""The CUDA runtime: libcuda (the driver API) and NVRTC through ctypes; no CUDA Python package.

One CUDARuntime per device (`CUDA:N`), each on the device's primary context with one stream of its
own: copies and kernels are queued in order on it, `copyout` and `synchronize` wait for it. The
collectives add a copy stream per device for copies into it, ordered against the rest by events
(`copy_async`, `mark`, `wait`). Freed
buffers are kept for reuse by size (the stream orders reuse, and cuMemFree would synchronise).
Kernels are rendered as CUDA C (codegen/cuda.py), compiled to a CUBIN for the device's compute
capability with NVRTC (or `nvcc -cubin` where no NVRTC library is found) and cached on disk by the
hash of source, architecture and compiler version. Every driver call's result is checked and a
failure raises CUDAError naming the call and the error (cuGetErrorName). `graph` records a run of
launches by stream capture into a CUDA graph (the JIT's replay). A kernel may take TMA tensor maps after
its buffers (codegen/cuda.TensorMap): they are encoded (cuTensorMapEncodeTiled) with the buffers' addresses
at each launch or bind. Kernels that need another target than the device's own (sm_90a for wgmma) say so.
"""
from __future__ import annotations
import ctypes, ctypes.util, functools, glob, hashlib, os, shutil, subprocess, sys, tempfile
import numpy as np
from ..device import Runtime, OutOfMemoryError, register

CACHE = os.path.join(os.environ.get("TRAINER_CACHE", os.path.expanduser("~/.cache/trainer")), "cuda")
POOL_BYTES = 8 << 30   # freed device memory kept for reuse, per device

# driver API constants (cuda.h)
CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704
CU_STREAM_NON_BLOCKING = 1
CU_EVENT_DISABLE_TIMING = 2
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
CU_TENSOR_MAP_DATA_TYPE = {"float16": 6, "bfloat16": 9}
CU_TENSOR_MAP_SWIZZLE_128B = 3
CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3


class CUDAError(RuntimeError): pass


# ---------------------------------------------------------------------------------------------- driver
_cuda = None            # the loaded libcuda, or None
_cuda_error = None      # why it could not be used


def _load_cuda():
  """libcuda.so.1 initialised, or None (and the reason in _cuda_error). Never raises."""
  global _cuda, _cuda_error
  if _cuda is not None or _cuda_error is not None: return _cuda
  lib = None
  for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
    if not name: continue
    try: lib = ctypes.CDLL(name); break
    except OSError: continue
  if lib is None:
    _cuda_error = "libcuda.so.1 (the NVIDIA driver) was not found"; return None
  _declare(lib)
  r = lib.cuInit(0)
  if r != 0:
    _cuda_error = f"cuInit failed: {_err_name(lib, r)}"; return None
  _cuda = lib
  return lib


def _declare(lib):
  P, I, U, S, V = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_uint64
  sigs = {
    "cuInit": [U], "cuGetErrorName": [I, ctypes.POINTER(ctypes.c_char_p)], "cuGetErrorString": [I, ctypes.POINTER(ctypes.c_char_p)],
    "cuDriverGetVersion": [ctypes.POINTER(I)],
    "cuDeviceGetCount": [ctypes.POINTER(I)], "cuDeviceGet": [ctypes.POINTER(I), I], "cuDeviceGetName": [ctypes.c_char_p, I, I],
    "cuDeviceGetAttribute": [ctypes.POINTER(I), I, I], "cuDeviceCanAccessPeer": [ctypes.POINTER(I), I, I],
    "cuDevicePrimaryCtxRetain": [ctypes.POINTER(P), I], "cuCtxSetCurrent": [P], "cuCtxSynchronize": [],
    "cuCtxEnablePeerAccess": [P, U],
    "cuMemAlloc_v2": [ctypes.POINTER(V), S], "cuMemFree_v2": [V], "cuMemGetInfo_v2": [ctypes.POINTER(S), ctypes.POINTER(S)],
    "cuMemcpyHtoDAsync_v2": [V, P, S, P], "cuMemcpyDtoHAsync_v2": [P, V, S, P], "cuMemcpyDtoDAsync_v2": [V, V, S, P],
    "cuMemcpyPeerAsync": [V, P, V, P, S, P], "cuMemsetD8Async": [V, ctypes.c_ubyte, S, P],
    "cuModuleLoadData": [ctypes.POINTER(P), P], "cuModuleGetFunction": [ctypes.POINTER(P), P, ctypes.c_char_p],
    "cuFuncSetAttribute": [P, I, I],
    "cuLaunchKernel": [P, U, U, U, U, U, U, U, P, P, P],
    "cuStreamCreate": [ctypes.POINTER(P), U], "cuStreamSynchronize": [P], "cuStreamWaitEvent": [P, P, U],
    "cuEventCreate": [ctypes.POINTER(P), U], "cuEventRecord": [P, P], "cuEventDestroy_v2": [P], "cuEventSynchronize": [P],
    "cuEventElapsedTime": [ctypes.POINTER(ctypes.c_float), P, P],
    "cuStreamBeginCapture_v2": [P, I], "cuStreamEndCapture": [P, ctypes.POINTER(P)],
    "cuGraphInstantiateWithFlags": [ctypes.POINTER(P), P, ctypes.c_ulonglong], "cuGraphLaunch": [P, P],
    "cuGraphExecDestroy": [P], "cuGraphDestroy": [P],
    "cuTensorMapEncodeTiled": [P, I, U, P, P, P, P, P, I, I, I, I],
  }
  for name, args in sigs.items():
    try: fn = getattr(lib, name)
    except AttributeError: continue
    fn.argtypes, fn.restype = args, ctypes.c_int


def _err_name(lib, r: int) -> str:
  s = ctypes.c_char_p()
  try:
    if lib.cuGetErrorName(r, ctypes.byref(s)) == 0 and s.value: return f"{s.value.decode()} ({r})"
  except Exception: pass
  return f"CUresult {r}"


def check(r: int, what: str):
  if r != 0:
    msg = _err_name(_cuda, r) if _cuda is not None else f"CUresult {r}"
    if _cuda is not None:
      s = ctypes.c_char_p()
      if _cuda.cuGetErrorString(r, ctypes.byref(s)) == 0 and s.value: msg += f": {s.value.decode()}"
    raise CUDAError(f"{what} failed: {msg}")


def physical_device_count() -> int:
  """How many GPUs the driver reports (0 without a driver), whatever TRAINER_CUDA_DEVICES says."""
  lib = _load_cuda()
  if lib is None: return 0
  n = ctypes.c_int(0)
  return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0


def cuda_device_count() -> int:
  """How many CUDA devices this host has; 0 (never an exception) without a driver or a device.
  TRAINER_CUDA_DEVICES=N presents N devices laid round-robin over the GPUs present (CUDA:1 on a
  one-GPU host is a second runtime, with its own streams, on GPU 0): multi-device code, collectives
  included, can then be checked for correctness on fewer GPUs, not timed."""
  n = physical_device_count()
  virtual = os.environ.get("TRAINER_CUDA_DEVICES")
  return int(virtual) if n and virtual else n


def cuda_unavailable_reason() -> str | None:
  """None when a CUDA device can be used, else why not."""
  if _load_cuda() is None: return _cuda_error
  return None if cuda_device_count() > 0 else "the NVIDIA driver reports no CUDA device"


# ---------------------------------------------------------------------------------------------- compiler
_nvrtc = None
_nvrtc_searched = False


def _nvrtc_candidates():
  env = os.environ.get("TRAINER_NVRTC")
  if env: yield env
  found = ctypes.util.find_library("nvrtc")
  if found: yield found
  for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"): yield name
  roots = [p for p in sys.path if p and os.path.isdir(os.path.join(p, "nvidia"))]
  for root in roots:   # the nvidia-cuda-nvrtc wheels: nvidia/cu13/lib, nvidia/cuda_nvrtc/lib
    for pat in ("nvidia/cu1*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
      yield from sorted((p for p in glob.glob(os.path.join(root, pat)) if "builtins" not in p and ".alt." not in p), reverse=True)
  homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
  for h in homes:
    if not h: continue
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
      yield from sorted(glob.glob(os.path.join(h, sub, "libnvrtc.so*")), reverse=True)


def load_nvrtc():
  """The NVRTC library (ctypes), or None when none is found."""
  global _nvrtc, _nvrtc_searched
  if _nvrtc_searched: return _nvrtc
  _nvrtc_searched = True
  for cand in _nvrtc_candidates():
    # NVRTC dlopens libnvrtc-builtins by name: load the one beside it first (found by its soname then)
    for b in sorted(glob.glob(os.path.join(os.path.dirname(cand), "libnvrtc-builtins.so*")) if os.path.dirname(cand) else []):
      if ".alt." in b: continue
      try: ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
      except OSError: pass
    try: lib = ctypes.CDLL(cand)
    except OSError: continue
    if not hasattr(lib, "nvrtcCreateProgram"): continue
    P, S = ctypes.c_void_p, ctypes.c_size_t
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, P, P]
    lib.nvrtcCompileProgram.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcGetProgramLogSize.argtypes = [P, ctypes.POINTER(S)]
    lib.nvrtcGetProgramLog.argtypes = [P, P]
    lib.nvrtcGetCUBINSize.argtypes = [P, ctypes.POINTER(S)]
    lib.nvrtcGetCUBIN.argtypes = [P, P]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(P)]
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    _nvrtc = lib
    break
  return _nvrtc


def _nvcc():
  for c in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
    if c and os.path.exists(c): return c
  return None


def compiler_version() -> str | None:
  """'nvrtc-MAJOR.MINOR' or 'nvcc-...', or None when no CUDA compiler is found."""
  lib = load_nvrtc()
  if lib is not None:
    ma, mi = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(ma), ctypes.byref(mi)) == 0: return f"nvrtc-{ma.value}.{mi.value}"
  nv = _nvcc()
  if nv:
    r = subprocess.run([nv, "--version"], capture_output=True, text=True)
    if r.returncode == 0: return "nvcc-" + r.stdout.strip().splitlines()[-1].split()[-1]
  return None


def _arch_flag(arch: str) -> str:
  return arch if arch.startswith(("sm_", "compute_")) else f"sm_{arch}"


def compile_cuda(src: str, arch: str = "sm_90", name: str = "kernel.cu", fmad: bool = True) -> bytes:
  """CUDA C -> CUBIN for `arch` (e.g. 'sm_90', 'sm_90a'), cached on disk by source, arch and compiler.
  fmad=False: no multiply-add contraction (kernels of the graph: their values must not depend on where the
  scheduler cut them, and a product contracted into an add in one kernel but stored in another would)."""
  ver = compiler_version()
  if ver is None: raise CUDAError("no CUDA compiler: neither NVRTC (libnvrtc, e.g. the nvidia-cuda-nvrtc wheel) nor nvcc was found")
  arch = _arch_flag(arch)
  key = hashlib.sha256(f"{src}\0{arch}\0{ver}\0{fmad}".encode()).hexdigest()[:24]
  path = os.path.join(CACHE, f"{key}.cubin")
  if os.path.exists(path):
    with open(path, "rb") as f: return f.read()
  flag = f"--fmad={'true' if fmad else 'false'}"
  cubin = _nvrtc_compile(src, arch, name, flag) if ver.startswith("nvrtc") else _nvcc_compile(src, arch, flag)
  os.makedirs(CACHE, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".cubin", dir=CACHE)
  with os.fdopen(fd, "wb") as f: f.write(cubin)
  os.replace(tmp, path)
  return cubin


@functools.lru_cache(maxsize=None)
def _array_type(ctype, n: int):
  """ctype * n, made once: each new ctypes array type is a reference cycle the garbage collector must find."""
  return ctype * n


def _carray(ctype, values) -> ctypes.Array:
  """A ctypes array of `values`."""
  values = list(values)
  return _array_type(ctype, len(values))(*values)


def _nvrtc_compile(src: str, arch: str, name: str, flag: str) -> bytes:
  lib = load_nvrtc()
  def ok(r, what):
    if r != 0: raise CUDAError(f"{what} failed: {lib.nvrtcGetErrorString(r).decode()} ({r})")
  prog = ctypes.c_void_p()
  ok(lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
  try:
    opts = [f"--gpu-architecture={arch}", "--std=c++17", "-lineinfo", flag]
    arr = _carray(ctypes.c_char_p, [o.encode() for o in opts])
    r = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = np.zeros(n.value + 1, np.uint8)   # numpy, not ctypes, buffers: a new ctypes array type is garbage in a cycle
    lib.nvrtcGetProgramLog(prog, log.ctypes.data)
    if r != 0:
      text = log.tobytes().split(b"\0")[0].decode(errors="replace")
      raise CUDAError(f"NVRTC failed on a generated kernel ({lib.nvrtcGetErrorString(r).decode()}):\n{text[-3000:]}"
                      f"\n--- source ---\n{_numbered(src)[-6000:]}")
    ok(lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)), "nvrtcGetCUBINSize")
    cubin = np.empty(n.value, np.uint8)
    ok(lib.nvrtcGetCUBIN(prog, cubin.ctypes.data), "nvrtcGetCUBIN")
    return cubin.tobytes()
  finally:
    lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvcc_compile(src: str, arch: str, flag: str) -> bytes:
  with tempfile.TemporaryDirectory() as d:
    cu, out = os.path.join(d, "k.cu"), os.path.join(d, "k.cubin")
    with open(cu, "w") as f: f.write(src)
    gencode = f"-gencode=arch=compute_{arch[3:]},code={arch}"
    r = subprocess.run([_nvcc(), "-cubin", gencode, "-std=c++17", "-lineinfo", flag, "-o", out, cu], capture_output=True, text=True)
    if r.returncode != 0:
      raise CUDAError(f"nvcc failed on a generated kernel:\n{r.stderr[-3000:]}\n--- source ---\n{_numbered(src)[-6000:]}")
    with open(out, "rb") as f: return f.read()


def _numbered(src: str) -> str: return "\n".join(f"{i+1:4d} {l}" for i, l in enumerate(src.splitlines()))


# ---------------------------------------------------------------------------------------------- runtime
_current_ctx = [None]


def encode_tensor_map(tm, handle: int):
  """A CUtensorMap (codegen/cuda.TensorMap over the buffer at `handle`) for a kernel parameter: (the
  ctypes buffer that holds it, its 64-byte aligned address). Out of bounds, copies read zeros and write nothing."""
  buf = _array_type(ctypes.c_char, 128 + 64)()
  addr = (ctypes.addressof(buf) + 63) & ~63
  rank = len(tm.dims)
  u64, u32 = ctypes.c_uint64, ctypes.c_uint32
  dims = _carray(u64, tm.dims)
  strides = _carray(u64, [2 * s for s in tm.strides] or [0])
  box, ones = _carray(u32, tm.box), _carray(u32, [1] * rank)
  check(_cuda.cuTensorMapEncodeTiled(addr, CU_TENSOR_MAP_DATA_TYPE[tm.dtype], rank, handle + 2 * tm.offset, dims, strides, box, ones,
                                     0, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, 0),
        f"cuTensorMapEncodeTiled(dims {tm.dims}, strides {tm.strides}, box {tm.box})")
  return buf, addr


class Program:
  """A compiled kernel on one device: launch(*outs, *inputs) with the launch dimensions chosen by codegen."""
  __slots__ = ("rt", "fn", "name", "grid", "block", "smem", "nargs", "zero", "tmaps")

  def __init__(self, rt, fn, name, grid, block, smem, nargs, zero=0, tmaps=()):
    self.rt, self.fn, self.name, self.grid, self.block, self.smem, self.nargs = rt, fn, name, grid, block, smem, nargs
    self.zero = zero     # bytes of the first output cleared before each launch
    self.tmaps = tmaps   # tensor maps over argument buffers, passed after the buffers

  def _params(self, handles):
    assert len(handles) == self.nargs, f"{self.name}: {len(handles)} buffers for {self.nargs} parameters"
    vals = [ctypes.c_uint64(int(h)) for h in handles]
    ptrs = [ctypes.addressof(v) for v in vals]
    for tm in self.tmaps:
      buf, addr = encode_tensor_map(tm, int(handles[tm.arg]))
      vals.append(buf); ptrs.append(addr)
    arr = _carray(ctypes.c_void_p, ptrs)
    return vals, arr

  def __call__(self, *handles):
    vals, arr = self._params(handles)
    if self.zero: self.rt.memset0(handles[0], self.zero)
    self.rt._launch(self, arr)

  def bind(self, *handles):
    """A zero-argument launch with the buffer addresses fixed (the JIT's replay unit)."""
    vals, arr = self._params(handles)
    rt, g, b, fn, smem = self.rt, self.grid, self.block, self.fn, self.smem
    launch, zero, out = rt.lib.cuLaunchKernel, self.zero, int(handles[0])
    def run(vals=vals):
      rt._activate()
      if zero: rt.memset0(out, zero)
      r = launch(fn, g[0], g[1], g[2], b[0], b[1], b[2], smem, rt.stream, arr, None)
      if r != 0: check(r, f"cuLaunchKernel({self.name})")
    return run


class GraphLaunch:
  """An instantiated CUDA graph: calling it launches every recorded kernel on the device's stream."""
  def __init__(self, rt, graph, exe, n):
    self.rt, self.graph, self.exe, self.n = rt, graph, exe, n

  def __call__(self):
    self.rt._activate()
    check(self.rt.lib.cuGraphLaunch(self.exe, self.rt.stream), f"cuGraphLaunch ({self.n} kernels) on {self.rt.name}")

  def __del__(self):
    if _cuda is None: return
    try:
      self.rt.lib.cuGraphExecDestroy(self.exe); self.rt.lib.cuGraphDestroy(self.graph)
    except Exception: pass


class CUDARuntime(Runtime):
  def __init__(self, name: str, index: int):
    lib = _load_cuda()
    if lib is None: raise CUDAError(f"{name}: CUDA is not available: {_cuda_error}")
    n = cuda_device_count()
    if index >= n: raise CUDAError(f"{name}: no such device (this host has {n} CUDA device{'s' if n != 1 else ''})")
    self.name, self.index, self.lib = name, index, lib
    dev = ctypes.c_int()
    check(lib.cuDeviceGet(ctypes.byref(dev), index % physical_device_count()), "cuDeviceGet")
    self.dev = dev.value
    ctx = ctypes.c_void_p()
    check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), self.dev), "cuDevicePrimaryCtxRetain")
    self.ctx = ctx.value
    self._activate()
    st = ctypes.c_void_p()
    check(lib.cuStreamCreate(ctypes.byref(st), CU_STREAM_NON_BLOCKING), "cuStreamCreate")
    self.stream = st.value
    self.cc = (self.attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR), self.attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
    self.arch = f"sm_{self.cc[0]}{self.cc[1]}"
    self.sm_count = self.attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
    self.max_smem = self.attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    buf = ctypes.create_string_buffer(256)
    check(lib.cuDeviceGetName(buf, 256, self.dev), "cuDeviceGetName")
    self.device_name = buf.value.decode()
    self.pool, self.pooled, self.peers, self._sizes = {}, 0, set(), {}
    self.held = self.peak = 0   # bytes of device memory allocated (in use or pooled), and the most ever
    self.modules = {}   # cubin key -> CUmodule
    self._copy_stream, self._events, self._accumulators = None, [], {}

  def attr(self, a: int) -> int:
    v = ctypes.c_int()
    check(self.lib.cuDeviceGetAttribute(ctypes.byref(v), a, self.dev), f"cuDeviceGetAttribute({a})")
    return v.value

  def _activate(self):
    if _current_ctx[0] != self.ctx:
      check(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
      _current_ctx[0] = self.ctx

  # -- memory
  def alloc(self, nbytes: int) -> int:
    nbytes = max(int(nbytes), 1)
    free = self.pool.get(nbytes)
    if free:
      self.pooled -= nbytes
      h = free.pop()
      self._sizes[h] = nbytes
      return h
    self._activate()
    p = ctypes.c_uint64()
    r = self.lib.cuMemAlloc_v2(ctypes.byref(p), nbytes)
    if r != 0 and self.pooled:   # out of memory with buffers parked in the pool: give them back and retry
      self._drain_pool()
      r = self.lib.cuMemAlloc_v2(ctypes.byref(p), nbytes)
    if r == CUDA_ERROR_OUT_OF_MEMORY: raise OutOfMemoryError(self.name, nbytes, self.in_use)
    check(r, f"cuMemAlloc({nbytes} bytes) on {self.name}")
    self._sizes[p.value] = nbytes
    self.held += nbytes; self.peak = max(self.peak, self.held)
    return p.value

  def memory_capacity(self) -> int:
    """Bytes this process can hold on the device: what is free now plus what our allocator holds (virtual
    devices over one GPU share it, each getting an equal part)."""
    self._activate()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    check(self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
    sharing = max(1, cuda_device_count() // physical_device_count())
    return (free.value + self.held) // sharing

  def _drain_pool(self):
    self.synchronize()
    for lst in self.pool.values():
      for h in lst: check(self.lib.cuMemFree_v2(h), "cuMemFree")
    self.held -= self.pooled
    self.pool, self.pooled = {}, 0

  def free(self, handle):
    if handle is None or _cuda is None: return
    size = self._sizes.pop(handle, None)
    if size is not None and self.pooled + size <= POOL_BYTES:
      self.pool.setdefault(size, []).append(handle); self.pooled += size
      return
    try:
      self._activate()
      self.lib.cuMemFree_v2(handle)
      self.held -= size or 0
    except Exception: pass

  def copyin(self, handle, data: np.ndarray):
    data = np.ascontiguousarray(data)
    if data.nbytes == 0: return
    self._activate()
    # pageable host memory is copied to a staging buffer before the call returns: `data` may go away
    check(self.lib.cuMemcpyHtoDAsync_v2(handle, data.ctypes.data, data.nbytes, self.stream), f"cuMemcpyHtoDAsync on {self.name}")

  def copyout(self, handle, nbytes: int) -> np.ndarray:
    out = np.empty(max(nbytes, 1), dtype=np.uint8)
    if nbytes:
      self._activate()
      check(self.lib.cuMemcpyDtoHAsync_v2(out.ctypes.data, handle, nbytes, self.stream), f"cuMemcpyDtoHAsync on {self.name}")
      check(self.lib.cuStreamSynchronize(self.stream), f"cuStreamSynchronize on {self.name} (a kernel before this copy may have failed)")
    return out[:nbytes]

  def copy_peer(self, dst_rt, dst, src, nbytes: int):
    if nbytes == 0: return
    self._activate()
    if isinstance(dst_rt, CUDARuntime):
      if dst_rt is self:
        check(self.lib.cuMemcpyDtoDAsync_v2(dst, src, nbytes, self.stream), "cuMemcpyDtoDAsync")
        return
      self._enable_peer(dst_rt)
      # the copy runs on this (the source) stream after the destination's earlier work, and the
      # destination's later work waits for it
      self._stream_wait(dst_rt, self)
      check(self.lib.cuMemcpyPeerAsync(dst, dst_rt.ctx, src, self.ctx, nbytes, self.stream), f"cuMemcpyPeerAsync {self.name} -> {dst_rt.name}")
      self._stream_wait(self, dst_rt)
      return
    if isinstance(dst, np.ndarray):   # a CPU runtime's buffer (numpy bytes)
      check(self.lib.cuMemcpyDtoHAsync_v2(dst.ctypes.data, src, nbytes, self.stream), "cuMemcpyDtoHAsync")
      check(self.lib.cuStreamSynchronize(self.stream), f"cuStreamSynchronize on {self.name}")
      return
    dst_rt.copyin(dst, self.copyout(src, nbytes))   # anything else: staged through host memory

  def _enable_peer(self, other):
    if other.index in self.peers: return
    if other.ctx == self.ctx:   # two virtual devices of one GPU
      self.peers.add(other.index); other.peers.add(self.index); return
    can = ctypes.c_int(0)
    check(self.lib.cuDeviceCanAccessPeer(ctypes.byref(can), self.dev, other.dev), "cuDeviceCanAccessPeer")
    if can.value:
      for a, b in ((self, other), (other, self)):
        a._activate()
        r = self.lib.cuCtxEnablePeerAccess(b.ctx, 0)
        if r not in (0, CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED): check(r, f"cuCtxEnablePeerAccess {a.name} -> {b.name}")
      self._activate()
    self.peers.add(other.index); other.peers.add(self.index)

  @staticmethod
  def _stream_wait(first, then):
    """`then`'s stream waits for the work queued so far on `first`'s stream."""
    first._activate()
    ev = ctypes.c_void_p()
    check(first.lib.cuEventCreate(ctypes.byref(ev), CU_EVENT_DISABLE_TIMING), "cuEventCreate")
    check(first.lib.cuEventRecord(ev, first.stream), "cuEventRecord")
    then._activate()
    check(then.lib.cuStreamWaitEvent(then.stream, ev, 0), "cuStreamWaitEvent")
    check(first.lib.cuEventDestroy_v2(ev), "cuEventDestroy")   # released once the wait has resolved

  def synchronize(self):
    self._activate()
    check(self.lib.cuStreamSynchronize(self.stream), f"cuStreamSynchronize on {self.name}")
    if self._copy_stream is not None: check(self.lib.cuStreamSynchronize(self._copy_stream), f"cuStreamSynchronize (copies) on {self.name}")

  # -- what the collectives build on: a copy stream per device for copies into it, ordered by events
  def view(self, handle, offset: int, nbytes: int): return int(handle) + offset

  def _event(self):
    if self._events: return self._events.pop()
    ev = ctypes.c_void_p()
    check(self.lib.cuEventCreate(ctypes.byref(ev), CU_EVENT_DISABLE_TIMING), "cuEventCreate")
    return (self, ev.value)

  def _record(self, stream):
    ev = self._event()
    check(self.lib.cuEventRecord(ev[1], stream), f"cuEventRecord on {self.name}")
    return ev

  def _wait_on(self, stream, events):
    for ev in events:
      if ev is not None: check(self.lib.cuStreamWaitEvent(stream, ev[1], 0), f"cuStreamWaitEvent on {self.name}")

  def mark(self):
    self._activate()
    return self._record(self.stream)

  def wait(self, events):
    self._activate()
    self._wait_on(self.stream, events)

  def release(self, events):
    """Events go back to their device's free list: every wait on them has been queued (a wait binds
    to the record before it), so recording them again cannot disturb it."""
    for ev in events:
      if ev is not None: ev[0]._events.append(ev)

  def copy_async(self, src_rt, dst, src, nbytes: int, after=()):
    """On this device's copy stream: wait for `after`, copy `nbytes` from src (on src_rt) into dst, and
    return the event of its completion. Nothing else is ordered: the caller waits for what it needs."""
    if not isinstance(src_rt, CUDARuntime): return super().copy_async(src_rt, dst, src, nbytes, after)
    self._activate()
    if self._copy_stream is None:
      st = ctypes.c_void_p()
      check(self.lib.cuStreamCreate(ctypes.byref(st), CU_STREAM_NON_BLOCKING), "cuStreamCreate")
      self._copy_stream = st.value
    self._wait_on(self._copy_stream, after)
    if nbytes:
      if src_rt.ctx == self.ctx: r = self.lib.cuMemcpyDtoDAsync_v2(dst, src, nbytes, self._copy_stream)
      else:
        src_rt._enable_peer(self); self._activate()
        r = self.lib.cuMemcpyPeerAsync(dst, self.ctx, src, src_rt.ctx, nbytes, self._copy_stream)
      check(r, f"copy {src_rt.name} -> {self.name} ({nbytes} bytes)")
    return self._record(self._copy_stream)

  def accumulate(self, dst, src, n: int, dtype, op: str, scale: float | None = None):
    key = (dtype, op, scale)
    prog = self._accumulators.get(key)
    if prog is None:
      from ..codegen.cuda import render_accumulate
      name = f"accumulate_{dtype.name}_{op}"
      r = render_accumulate(dtype, op, scale, name, self.sm_count)
      prog = self._accumulators[key] = self.load(compile_cuda(r.src, self.arch, f"{name}.cu"), name, r.grid, r.block, 0, 3)
    if n: prog(int(dst), int(src), n)

  # -- kernels
  def memset0(self, handle, nbytes: int):
    self._activate()
    check(self.lib.cuMemsetD8Async(handle, 0, nbytes, self.stream), f"cuMemsetD8Async on {self.name}")

  def load(self, cubin: bytes, name: str, grid, block, smem: int, nargs: int, zero: int = 0, tmaps=()) -> Program:
    key = hashlib.sha256(cubin).hexdigest()
    self._activate()
    mod = self.modules.get(key)
    if mod is None:
      m = ctypes.c_void_p()
      check(self.lib.cuModuleLoadData(ctypes.byref(m), cubin), f"cuModuleLoadData({name}) on {self.name}")
      mod = self.modules[key] = m.value
    fn = ctypes.c_void_p()
    check(self.lib.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), f"cuModuleGetFunction({name})")
    if smem > 48 * 1024:
      if smem > self.max_smem: raise CUDAError(f"{name}: {smem} bytes of shared memory, the device allows {self.max_smem}")
      check(self.lib.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem), f"cuFuncSetAttribute({name}, {smem} B shared)")
    for i, (g, lim) in enumerate(zip(grid, (2**31 - 1, 65535, 65535))):
      if not 1 <= g <= lim: raise CUDAError(f"{name}: grid dimension {i} is {g} (limit {lim})")
    return Program(self, fn.value, name, tuple(grid), tuple(block), smem, nargs, zero, tmaps)

  def compile(self, kernel, name: str) -> Program:
    from ..codegen import cuda as cuda_codegen
    r = cuda_codegen.render(kernel, name, self.arch, self.sm_count)
    cubin = compile_cuda(r.src, r.arch or self.arch, f"{name}.cu", fmad=False)
    return self.load(cubin, name, r.grid, r.block, r.smem, 1 + len(kernel.inputs), r.zero_output, r.tmaps)

  def compile_custom(self, kernel, name: str, outs, inputs):
    if not hasattr(kernel, "render_cuda"): return super().compile_custom(kernel, name, outs, inputs)
    r = kernel.render_cuda(name, self.arch)
    cubin = compile_cuda(r.src, r.arch or self.arch, f"{name}.cu", fmad=r.fmad)
    return self.load(cubin, name, r.grid, r.block, r.smem, len(outs) + len(inputs), r.zero_output, r.tmaps)

  def _launch(self, prog: Program, params):
    self._activate()
    g, b = prog.grid, prog.block
    check(self.lib.cuLaunchKernel(prog.fn, g[0], g[1], g[2], b[0], b[1], b[2], prog.smem, self.stream, params, None),
          f"cuLaunchKernel({prog.name}) on {self.name}")

  # -- graphs (the JIT's replay)
  def graph(self, calls) -> GraphLaunch:
    """Record zero-argument launch calls on this device's stream into a CUDA graph, replayed as one launch."""
    self._activate()
    check(self.lib.cuStreamBeginCapture_v2(self.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), f"cuStreamBeginCapture on {self.name}")
    g = ctypes.c_void_p()
    try:
      for f in calls: f()
    finally:
      r = self.lib.cuStreamEndCapture(self.stream, ctypes.byref(g))
    check(r, f"cuStreamEndCapture on {self.name}")
    ex = ctypes.c_void_p()
    check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(ex), g, 0), f"cuGraphInstantiate on {self.name}")
    return GraphLaunch(self, g.value, ex.value, len(calls))

  # -- timing (benchmarks)
  def event(self):
    self._activate()
    ev = ctypes.c_void_p()
    check(self.lib.cuEventCreate(ctypes.byref(ev), 0), "cuEventCreate")
    check(self.lib.cuEventRecord(ev, self.stream), "cuEventRecord")
    return ev

  def elapsed_ms(self, start, end) -> float:
    check(self.lib.cuEventSynchronize(end), "cuEventSynchronize")
    ms = ctypes.c_float()
    check(self.lib.cuEventElapsedTime(ctypes.byref(ms), start, end), "cuEventElapsedTime")
    return ms.value


register("CUDA", CUDARuntime, cuda_device_count)
