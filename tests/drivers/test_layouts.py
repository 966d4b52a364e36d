"""Our ctypes mirrors of the KFD ioctl structs (linux/kfd_ioctl.h) and of the HSA packets, queue and
signal (hsa/hsa.h, hsa/amd_hsa_queue.h, hsa/amd_hsa_signal.h) against the system's headers: a C
program prints every field's offset and size, each struct's size and the ioctl numbers and constants
we use, and they must equal ours. (.ci/run installs linux-libc-dev and libhsa-runtime-dev.)"""
import ctypes, os, subprocess
import pytest
from trainer.drivers.amd import hsa, kfd

KFD_H, HSA_H = "/usr/include/linux/kfd_ioctl.h", "/usr/include/hsa/hsa.h"
HSA = [(hsa.dispatch_packet_t, "hsa_kernel_dispatch_packet_t"), (hsa.barrier_and_packet_t, "hsa_barrier_and_packet_t"),
       (hsa.queue_t, "hsa_queue_t"), (hsa.amd_queue_t, "amd_queue_t"), (hsa.signal_t, "amd_signal_t")]
KFD_CONSTANTS = {"KFD_IOC_ALLOC_MEM_FLAGS_VRAM": kfd.MEM_VRAM, "KFD_IOC_ALLOC_MEM_FLAGS_GTT": kfd.MEM_GTT,
                 "KFD_IOC_ALLOC_MEM_FLAGS_USERPTR": kfd.MEM_USERPTR, "KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL": kfd.MEM_DOORBELL,
                 "KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP": kfd.MEM_MMIO_REMAP, "KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE": kfd.MEM_WRITABLE,
                 "KFD_IOC_ALLOC_MEM_FLAGS_EXECUTABLE": kfd.MEM_EXECUTABLE, "KFD_IOC_ALLOC_MEM_FLAGS_PUBLIC": kfd.MEM_PUBLIC,
                 "KFD_IOC_ALLOC_MEM_FLAGS_AQL_QUEUE_MEM": kfd.MEM_AQL_QUEUE_MEM, "KFD_IOC_ALLOC_MEM_FLAGS_COHERENT": kfd.MEM_COHERENT,
                 "KFD_IOC_ALLOC_MEM_FLAGS_UNCACHED": kfd.MEM_UNCACHED, "KFD_IOC_QUEUE_TYPE_COMPUTE": kfd.QUEUE_COMPUTE,
                 "KFD_IOC_QUEUE_TYPE_SDMA": kfd.QUEUE_SDMA, "KFD_IOC_QUEUE_TYPE_COMPUTE_AQL": kfd.QUEUE_COMPUTE_AQL,
                 "KFD_IOC_QUEUE_TYPE_SDMA_XGMI": kfd.QUEUE_SDMA_XGMI, "KFD_MIN_QUEUE_RING_SIZE": kfd.MIN_QUEUE_RING_SIZE,
                 "KFD_MAX_QUEUE_PERCENTAGE": kfd.MAX_QUEUE_PERCENTAGE, "KFD_IOC_EVENT_SIGNAL": kfd.EVENT_SIGNAL,
                 "KFD_IOC_EVENT_HW_EXCEPTION": kfd.EVENT_HW_EXCEPTION, "KFD_IOC_EVENT_MEMORY": kfd.EVENT_MEMORY,
                 "KFD_IOC_WAIT_RESULT_COMPLETE": kfd.WAIT_COMPLETE, "KFD_IOC_WAIT_RESULT_TIMEOUT": kfd.WAIT_TIMEOUT,
                 "KFD_IOC_WAIT_RESULT_FAIL": kfd.WAIT_FAIL, "KFD_SIGNAL_EVENT_LIMIT": kfd.SIGNAL_EVENT_LIMIT,
                 **{f"AMDKFD_IOC_{n}": v for n, v in kfd.IOCTL_NAMES.items()}}
HSA_CONSTANTS = {"HSA_PACKET_TYPE_INVALID": hsa.TYPE_INVALID, "HSA_PACKET_TYPE_KERNEL_DISPATCH": hsa.TYPE_KERNEL_DISPATCH,
                 "HSA_PACKET_TYPE_BARRIER_AND": hsa.TYPE_BARRIER_AND, "HSA_PACKET_HEADER_BARRIER": hsa.HEADER_BARRIER,
                 "HSA_PACKET_HEADER_SCACQUIRE_FENCE_SCOPE": hsa.HEADER_ACQUIRE_SCOPE,
                 "HSA_PACKET_HEADER_SCRELEASE_FENCE_SCOPE": hsa.HEADER_RELEASE_SCOPE, "HSA_FENCE_SCOPE_SYSTEM": hsa.SCOPE_SYSTEM,
                 "AMD_SIGNAL_KIND_USER": hsa.SIGNAL_KIND_USER, "HSA_QUEUE_TYPE_MULTI": hsa.QUEUE_TYPE_MULTI}


def fields(struct, prefix=""):
  """(C member path, our offset, our size) of every field, through anonymous members."""
  out = []
  for f in struct._fields_:
    name, typ, off = f[0], f[1], getattr(struct, f[0]).offset
    if name in getattr(struct, "_anonymous_", ()):
      out += [(p, off + o, s) for p, o, s in fields(typ, prefix)]
    else: out.append((prefix + name, off, ctypes.sizeof(typ)))
  return out


def c_report(tmp_path, includes, structs, constants) -> dict:
  lines = [f"#include <{h}>" for h in ["stdio.h", "stddef.h", *includes]] + ["int main(void) {"]
  for st, cname in structs:
    lines.append(f'printf("size\\t{cname}\\t%zu\\n", sizeof({cname}));')
    for path, _, _ in fields(st):
      lines.append(f'printf("field\\t{cname}.{path}\\t%zu\\t%zu\\n", offsetof({cname}, {path}), sizeof((({cname}*)0)->{path}));')
  for name in constants: lines.append(f'printf("const\\t{name}\\t%llu\\n", (unsigned long long)(unsigned int)({name}));')
  src = tmp_path / "layout.c"
  src.write_text("\n".join(lines + ["return 0; }"]) + "\n")
  # kfd_ioctl.h includes <drm/drm.h> only for the kernel's integer types and ioctl macros; Debian ships that
  # header in libdrm-dev, so a two-line stand-in gives them here (every constant checked is 32 bits wide: printed as such)
  (tmp_path / "drm").mkdir()
  (tmp_path / "drm" / "drm.h").write_text("#include <linux/types.h>\n#include <linux/ioctl.h>\n")
  exe = tmp_path / "layout"
  r = subprocess.run(["cc", "-I", str(tmp_path), "-o", str(exe), str(src)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
  report = {}
  for line in out.splitlines():
    kind, name, *values = line.split("\t")
    report[(kind, name)] = tuple(int(v) for v in values) if kind == "field" else int(values[0])
  return report


def check(report, structs, constants):
  for st, cname in structs:
    assert report[("size", cname)] == ctypes.sizeof(st), f"sizeof {cname}"
    for path, off, size in fields(st):
      got = report[("field", f"{cname}.{path}")]
      assert got == (off, size), f"{cname}.{path}: header (offset, size) {got}, ours {(off, size)}"
  for name, value in constants.items(): assert report[("const", name)] == value, f"{name}: header {report[('const', name)]:#x}, ours {value:#x}"


@pytest.mark.skipif(not os.path.exists(KFD_H), reason=f"{KFD_H} missing (Debian: linux-libc-dev)")
def test_kfd_structs_and_ioctl_numbers_match_the_header(tmp_path):
  structs = [(s, "struct " + s.__name__) for s in kfd.HEADER_STRUCTS]
  check(c_report(tmp_path, ["linux/kfd_ioctl.h"], structs, KFD_CONSTANTS), structs, KFD_CONSTANTS)


@pytest.mark.skipif(not os.path.exists(HSA_H), reason=f"{HSA_H} missing (Debian: libhsa-runtime-dev)")
def test_hsa_packets_queue_and_signal_match_the_headers(tmp_path):
  check(c_report(tmp_path, ["hsa/hsa.h", "hsa/amd_hsa_queue.h", "hsa/amd_hsa_signal.h"], HSA, HSA_CONSTANTS), HSA, HSA_CONSTANTS)
