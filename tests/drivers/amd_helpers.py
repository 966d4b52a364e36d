"""What several AMD driver tests share: the mark of tests that need clang with the amdgcn target."""
import pytest
from trainer.drivers.amd import compiler

needs_clang = pytest.mark.skipif(compiler.unavailable_reason() is not None, reason=str(compiler.unavailable_reason()))


def readelf_path() -> str | None:
  """llvm-readelf of the clang found (it decodes AMDGPU metadata notes), or None."""
  import os, shutil
  c = compiler.clang()
  own = c and os.path.join(os.path.dirname(os.path.realpath(c)), "llvm-readelf")
  return own if own and os.path.exists(own) else shutil.which("llvm-readelf")


def readelf_view(paths: list[str]) -> dict:
  """path -> (metadata as the compiler's own tool prints it, {symbol: value}), one llvm-readelf run for all."""
  import subprocess, yaml
  out = subprocess.run([readelf_path(), "--notes", "--symbols", *paths], capture_output=True, text=True, check=True).stdout
  views = {}
  for chunk in out.split("\nFile: ")[1:]:
    path, _, rest = chunk.partition("\n")
    syms = {}
    for line in rest.splitlines():
      parts = line.split()
      if len(parts) == 8 and parts[0].endswith(":") and parts[0][:-1].isdigit(): syms[parts[7]] = int(parts[1], 16)
    doc = rest[rest.index("---"):rest.index("\n...", rest.index("---"))]
    views[path.strip()] = (yaml.safe_load(doc), syms)
  return views


KD_FIELDS = (".name", ".symbol", ".kernarg_segment_size", ".kernarg_segment_align", ".group_segment_fixed_size",
             ".private_segment_fixed_size", ".wavefront_size", ".sgpr_count", ".vgpr_count", ".max_flat_workgroup_size")


def check_code_objects(paths: list[str]) -> int:
  """Our ELF reader's view of each code object equals the compiler's metadata and symbols; kernels checked."""
  from trainer.drivers.amd.elf import CodeObject
  n = 0
  for path, (meta, syms) in readelf_view(paths).items():
    co = CodeObject(open(path, "rb").read())
    assert co.target == meta["amdhsa.target"], path
    theirs = {k[".name"]: k for k in meta["amdhsa.kernels"]}
    assert set(co.kernels) == set(theirs), path
    for name, k in co.kernels.items():
      t = theirs[name]
      for f in KD_FIELDS: assert k.meta.get(f) == t.get(f), (path, name, f)
      assert [(a[".offset"], a[".size"], a[".value_kind"]) for a in k.args] == [(a[".offset"], a[".size"], a[".value_kind"]) for a in t.get(".args", [])]
      assert k.kd_offset == syms[t[".symbol"]], (path, name)
      kd = k.descriptor
      assert kd.group_segment_fixed_size == t[".group_segment_fixed_size"] and kd.private_segment_fixed_size == t[".private_segment_fixed_size"]
      assert kd.kernarg_size == t[".kernarg_segment_size"] and kd.wave_size == t[".wavefront_size"], (path, name)
      assert k.kd_offset + kd.kernel_code_entry_byte_offset == syms[name], (path, name)   # the descriptor points at the code
      n += 1
  return n
