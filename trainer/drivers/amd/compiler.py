"""AMDGPU code objects from C source: clang with the amdgcn target (`--target=amdgcn-amd-amdhsa
-mcpu=gfxNNN -nogpulib -c`), linked by ld.lld into a shared object (two steps: the clang driver's own
link costs a process more), cached on disk by the hash of source,
target and compiler version. clang 19 knows gfx942 and gfx1100; gfx950 needs clang 20 or newer
(`supports` tells). ROCm's comgr is not used."""
from __future__ import annotations
import functools, hashlib, os, shutil, subprocess, tempfile
from .kfd import AmdError

CLANGS = ("clang-22", "clang-21", "clang-20", "clang-19", "clang", "/opt/rocm/llvm/bin/clang")
FLAGS = ["-x", "c", "--target=amdgcn-amd-amdhsa", "-nogpulib", "-O3", "-fno-math-errno", "-ffp-contract=off",
         "-mcode-object-version=5"]
CACHE = os.path.join(os.environ.get("TRAINER_CACHE", os.path.expanduser("~/.cache/trainer")), "amd")


@functools.lru_cache(maxsize=None)
def clang() -> str | None:
  """The newest clang found that has the amdgcn target and an ld.lld beside it, or None."""
  for c in CLANGS:
    path = shutil.which(c)
    if path and lld(path) and supports_with(path, "gfx1100"): return path
  return None


def lld(clang_path: str) -> str | None:
  """ld.lld of the same LLVM as clang_path (its own bin directory), else one on PATH."""
  own = os.path.join(os.path.dirname(os.path.realpath(clang_path)), "ld.lld")
  return own if os.path.exists(own) else shutil.which("ld.lld")


def supports_with(path: str, target: str) -> bool:
  r = subprocess.run([path, *FLAGS, f"-mcpu={target}", "-c", "-", "-o", os.devnull], input=b"void f(void) {}\n", capture_output=True)
  return r.returncode == 0


@functools.lru_cache(maxsize=None)
def version() -> str:
  c = clang()
  if c is None: return "none"
  return subprocess.run([c, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


@functools.lru_cache(maxsize=None)
def supports(target: str) -> bool:
  """Whether the clang found compiles for this processor (gfx950 needs LLVM 20)."""
  c = clang()
  return c is not None and supports_with(c, target)


def unavailable_reason() -> str | None:
  if clang() is None: return "no clang with the amdgcn target and lld (apt-get install clang-19 lld-19)"
  return None


def compile_source(src: str, target: str, name: str = "kernel") -> bytes:
  """C source -> a code object (ELF bytes) for `target` (e.g. 'gfx942')."""
  c = clang()
  if c is None: raise AmdError(unavailable_reason())
  if not supports(target): raise AmdError(f"{version()} cannot compile for {target}")
  key = hashlib.sha256(f"{src}\0{target}\0{version()}\0{' '.join(FLAGS)}".encode()).hexdigest()[:24]
  path = os.path.join(CACHE, f"{key}.hsaco")
  if os.path.exists(path):
    with open(path, "rb") as f: return f.read()
  os.makedirs(CACHE, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".hsaco", dir=CACHE); os.close(fd)
  r = subprocess.run([c, *FLAGS, f"-mcpu={target}", "-c", "-", "-o", tmp + ".o"], input=src.encode(), capture_output=True)
  if r.returncode == 0:
    r = subprocess.run([lld(c), "-shared", tmp + ".o", "-o", tmp], capture_output=True)
    os.unlink(tmp + ".o")
  if r.returncode != 0:
    os.unlink(tmp)
    numbered = "\n".join(f"{i + 1:4d} {l}" for i, l in enumerate(src.splitlines()))
    raise AmdError(f"clang failed on {name} for {target}:\n{r.stderr.decode()[-3000:]}\n--- source ---\n{numbered[-6000:]}")
  os.replace(tmp, path)
  with open(path, "rb") as f: return f.read()
