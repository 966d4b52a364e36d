"""Runs a dispatched kernel on the host: the source the code object carries (codegen/amd.py embeds
it), compiled by the system C compiler after the grid shim's declarations (shim.h; shim.c, built once:
work-items as fibers, barriers, LDS, and the wave and matrix-core operations lane by lane), with an entry that reads the kernel's
parameters from the dispatch's kernel-argument bytes as the code object's metadata lays them out.
Builds are cached on disk by the hash of what is compiled."""
from __future__ import annotations
import ctypes, hashlib, os, subprocess, tempfile

CC = os.environ.get("CC", "cc")
FLAGS = ["-O1", "-shared", "-fPIC", "-fwrapv", "-fno-strict-aliasing", "-ffp-contract=off", "-fno-math-errno", "-w"]
CACHE = os.path.join(os.environ.get("TRAINER_CACHE", os.path.expanduser("~/.cache/trainer")), "amdsim")
HERE = os.path.dirname(__file__)
SHIM_H, SHIM_C = (open(os.path.join(HERE, f)).read() for f in ("shim.h", "shim.c"))
RESULTS = {1: "a barrier that not every work-item of its work-group (or wave) reached", 2: "a work-group of more than 1024 work-items",
           3: "no memory for the work-items' stacks"}
_loaded: dict = {}
GROUPS = ctypes.c_longlong * 3


def _param(arg: dict) -> str:
  """The C expression of one parameter read from the argument bytes `ka`."""
  off, size = arg[".offset"], arg[".size"]
  if arg[".value_kind"] == "global_buffer": return f"(void*)*(const unsigned long long*)(ka + {off})"
  if arg[".value_kind"] == "by_value" and size in (1, 2, 4, 8):
    t = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}[size]
    return f"*(const {t}*)(ka + {off})"
  raise ValueError(f"kernel parameter of kind {arg['.value_kind']} ({size} bytes) is not simulated")


def _compile(src: str, what: str, extra=()) -> str:
  """src built into a shared object in the cache (once); its path."""
  key = hashlib.sha256((src + " ".join(FLAGS) + CC).encode()).hexdigest()[:24]
  path = os.path.join(CACHE, f"{key}.so")
  if not os.path.exists(path):
    os.makedirs(CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=CACHE); os.close(fd)
    r = subprocess.run([CC, *FLAGS, *extra, "-x", "c", "-", "-o", tmp], input=src.encode(), capture_output=True)
    if r.returncode != 0:
      os.unlink(tmp)
      raise RuntimeError(f"the simulator's host build of {what} failed:\n{r.stderr.decode()[-3000:]}")
    os.replace(tmp, path)
  return path


_shim = None


def shim():
  """The grid shim, built once and loaded so that kernels' host builds resolve against it."""
  global _shim
  if _shim is None:
    _shim = ctypes.CDLL(_compile(SHIM_C.replace('#include "shim.h"', SHIM_H), "the grid shim"), mode=ctypes.RTLD_GLOBAL)
  return _shim


def build(source: str, kernels: list, wave: int) -> dict:
  """The host build of a code object's source: for each kernel (its metadata), a function (argument
  bytes address, groups (x, y, z), lanes) -> status."""
  entries = []
  for meta in kernels:
    name = meta[".name"]
    params = [_param(a) for a in meta.get(".args", []) if not a[".value_kind"].startswith("hidden_")]
    entries.append(f"\nstatic void k__body_{name}(const char* ka) {{ {name}({', '.join(params)}); }}\n"
                   f"int k__dispatch_{name}(const char* ka, const long long* groups, int lanes) "
                   f"{{ return k_sim_dispatch(k__body_{name}, ka, groups, lanes, {wave}); }}\n")
  src = SHIM_H + source + "".join(entries)
  if src not in _loaded:
    shim()
    lib = ctypes.CDLL(_compile(src, ", ".join(m[".name"] for m in kernels)))
    fns = {}
    for meta in kernels:
      fn = getattr(lib, f"k__dispatch_{meta['.name']}")
      fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_longlong), ctypes.c_int], ctypes.c_int
      fns[meta[".name"]] = fn
    _loaded[src] = fns
  return _loaded[src]


def run(fn, kernarg: int, groups: tuple, lanes: int) -> str | None:
  """Run all work-groups; None, or what went wrong."""
  r = fn(kernarg, GROUPS(*groups), lanes)
  return RESULTS.get(r, f"status {r}") if r else None
