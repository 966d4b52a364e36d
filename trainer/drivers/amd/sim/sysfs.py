"""The sysfs files KFD and amdgpu publish, for a simulated machine: a CPU node 0 and one node per GPU
(or GPU partition) of the chosen kinds, with the properties `node_show` (kfd_topology.c) prints,
memory banks, links (XGMI inside a hive, else PCIe) and each GPU's ip_discovery versions.

The values are those of real boards, from public dumps: MI300X in SPX mode from a rocprofv3 agent-info
CSV of an MI300X (EPYC 9654 host) kept as a test fixture in a public repository (simd_count 1216,
array_count 32, simd_arrays_per_engine 1, cu_per_simd_array 10, num_sdma_xgmi_engines 14, ...);
7900 XTX from rocminfo dumps in ROCm/rocFFT#531 and ollama/ollama#3158 (96 CUs, 2 SIMDs per CU, 6 shader
engines of 2 arrays, chip id 0x744C); the Ryzen 7000 integrated GPU (Raphael, gfx1036: 2 CUs, GC 10.3.6,
SDMA 5.2.6) from rocminfo in ROCm/legacy-rocm-build#3166 and amdgpu's IP table. A CPX partition of an
MI300X is one XCC of the SPX node (a 1/8 share of simd_count, array_count and memory, kfd_topology.c
divides by the partition's XCCs); MI350X (gfx950: 256 CUs, 160 KiB of LDS per CU, device id 0x75A0)
follows AMD's data sheet where no dump was found. Values a dump did not show are marked `# assumed`.

New kernels (6.18+, "drm/amdkfd: Export the cwsr_size and ctl_stack_size to userspace") print the
node's cwsr_size and ctl_stack_size; `old_kernel` machines (6.12-6.17: they check the sizes but do not
publish them) leave them out."""
from __future__ import annotations
from ..topology import TOPOLOGY, IP_DISCOVERY, GC_HWID, SDMA0_HWID
from . import kfd_queue

GIB = 1 << 30
LINK_XGMI, LINK_PCIE = 11, 2      # io_links type (CRAT_IOLINK_TYPE_*)
HIVE_ID = 18143416471259055690    # the MI300X dump's hive id, shared by every CDNA GPU of a simulated machine
FIRST_RENDER_MINOR = 128
_MI300X = dict(simd_count=1216, simd_per_cu=4, num_xcc=8, array_count=32, simd_arrays_per_engine=1, cu_per_simd_array=10,
               max_waves_per_simd=8, wave_front_size=64, lds_size_in_kb=64, gds_size_in_kb=0, num_gws=64, max_slots_scratch_cu=32,
               gfx_target_version=90402, device_id=0x74A1, num_sdma_engines=2, num_sdma_xgmi_engines=14,
               num_sdma_queues_per_engine=8, num_cp_queues=24, max_engine_clk_fcompute=2100, max_engine_clk_ccompute=2400,
               fw_version=186, sdma_fw_version=24, capability=2893521536, family_id=141, vram=192 * GIB, ip=((9, 4, 3), (4, 4, 2)))
KINDS = {
  "gfx942": _MI300X,
  "gfx942-cpx": {**_MI300X, "simd_count": 152, "num_xcc": 1, "array_count": 4, "vram": 24 * GIB,
                 "num_sdma_engines": 1, "num_sdma_xgmi_engines": 1},     # sdma split per partition: assumed
  "gfx950": {**_MI300X, "simd_count": 1024, "cu_per_simd_array": 8, "lds_size_in_kb": 160, "gfx_target_version": 90500,
             "device_id": 0x75A0, "max_engine_clk_fcompute": 2400, "vram": 288 * GIB, "fw_version": 0, "sdma_fw_version": 0,
             "family_id": 141, "ip": ((9, 5, 0), (4, 4, 5))},               # firmware versions: assumed
  "gfx1100": dict(simd_count=192, simd_per_cu=2, num_xcc=1, array_count=12, simd_arrays_per_engine=2, cu_per_simd_array=8,
                  max_waves_per_simd=16, wave_front_size=32, lds_size_in_kb=64, gds_size_in_kb=0, num_gws=64, max_slots_scratch_cu=32,
                  gfx_target_version=110000, device_id=0x744C, num_sdma_engines=2, num_sdma_xgmi_engines=0,
                  num_sdma_queues_per_engine=6, num_cp_queues=8, max_engine_clk_fcompute=2526, max_engine_clk_ccompute=4700,
                  fw_version=202, sdma_fw_version=20, capability=0, family_id=145, vram=24 * GIB, ip=((11, 0, 0), (6, 0, 0))),
  "gfx1036": dict(simd_count=4, simd_per_cu=2, num_xcc=1, array_count=1, simd_arrays_per_engine=1, cu_per_simd_array=2,
                  max_waves_per_simd=16, wave_front_size=32, lds_size_in_kb=64, gds_size_in_kb=0, num_gws=0, max_slots_scratch_cu=32,
                  gfx_target_version=100306, device_id=0x164E, num_sdma_engines=1, num_sdma_xgmi_engines=0,
                  num_sdma_queues_per_engine=2, num_cp_queues=8, max_engine_clk_fcompute=2200, max_engine_clk_ccompute=4700,
                  fw_version=0, sdma_fw_version=0, capability=0, family_id=146, vram=GIB // 2, ip=((10, 3, 6), (5, 2, 6))),
}
# whole machines by name (TRAINER_AMD_SIM accepts these as well as lists of kinds)
MACHINES = {
  "mi300x": ["gfx942"] * 8,
  "mi300x-cpx": ["gfx942-cpx"] * 8,                 # one MI300X split into 8 compute partitions (one XCC each)
  "mi350x": ["gfx950"] * 8,
  "7900xtx-raphael": ["gfx1036", "gfx1100"],        # a desktop: the CPU's integrated GPU is KFD's first GPU node
}


def gpu_id(i: int) -> int: return 0x3A00 + 0x111 * i   # KFD gpu_ids are hashes; any distinct non-zero values do


def node_props(kind: str, i: int, n_gpus: int, old_kernel: bool) -> dict:
  """The properties file of GPU node i+1 as `node_show` prints it (cwsr_size and ctl_stack_size on new kernels)."""
  k, cdna = KINDS[kind], KINDS[kind]["gfx_target_version"] < 100000
  props = {"cpu_cores_count": 0, "simd_count": k["simd_count"], "mem_banks_count": 1, "caches_count": 0, "io_links_count": n_gpus,
           "p2p_links_count": 0, "cpu_core_id_base": 0, "simd_id_base": 0x80000000 + 0x1000 * i}
  for key in ("max_waves_per_simd", "lds_size_in_kb", "gds_size_in_kb", "num_gws", "wave_front_size", "array_count",
              "simd_arrays_per_engine", "cu_per_simd_array", "simd_per_cu", "max_slots_scratch_cu", "gfx_target_version"):
    props[key] = k[key]
  props.update(vendor_id=0x1002, device_id=k["device_id"], location_id=0x500 + 0x100 * i, domain=0,
               drm_render_minor=FIRST_RENDER_MINOR + i, hive_id=HIVE_ID if cdna else 0, num_sdma_engines=k["num_sdma_engines"],
               num_sdma_xgmi_engines=k["num_sdma_xgmi_engines"], num_sdma_queues_per_engine=k["num_sdma_queues_per_engine"],
               num_cp_queues=k["num_cp_queues"])
  if not old_kernel:
    sizes = kfd_queue.node_sizes(props | {"num_xcc": k["num_xcc"]})
    props.update(cwsr_size=sizes["cwsr_size"], ctl_stack_size=sizes["ctl_stack_size"])
  props.update(max_engine_clk_fcompute=k["max_engine_clk_fcompute"], local_mem_size=0, fw_version=k["fw_version"],
               capability=k["capability"], debug_prop=0, sdma_fw_version=k["sdma_fw_version"], unique_id=0xA3D0_0000_0000 + i,
               num_xcc=k["num_xcc"], max_engine_clk_ccompute=k["max_engine_clk_ccompute"])
  return props


def expand(kinds) -> list[str]:
  """GPU kinds from a list of kinds and machine names."""
  out = []
  for k in kinds:
    if k in MACHINES: out += MACHINES[k]
    elif k in KINDS: out.append(k)
    else: raise ValueError(f"TRAINER_AMD_SIM: unknown GPU kind or machine {k!r} (kinds: {', '.join(KINDS)}; machines: {', '.join(MACHINES)})")
  return out


def tree(kinds: list[str], old_kernel: bool = False) -> dict[str, str]:
  """path -> file content for every file of the simulated machine (directories are implied)."""
  files = {f"{TOPOLOGY}/0/gpu_id": "0\n", f"{TOPOLOGY}/0/properties": "cpu_cores_count 2\nsimd_count 0\nmem_banks_count 1\n"}
  for i, kind in enumerate(kinds):
    k, node, minor = KINDS[kind], i + 1, FIRST_RENDER_MINOR + i
    base = f"{TOPOLOGY}/{node}"
    files[f"{base}/gpu_id"] = f"{gpu_id(i)}\n"
    files[f"{base}/properties"] = "".join(f"{key} {v}\n" for key, v in node_props(kind, i, len(kinds), old_kernel).items())
    files[f"{base}/mem_banks/0/properties"] = f"heap_type 1\nsize_in_bytes {k['vram']}\nwidth 4096\n"
    cdna = lambda kk: KINDS[kk]["num_sdma_xgmi_engines"] > 0
    links = [(0, LINK_PCIE)] + [(j + 1, LINK_XGMI if cdna(o) and cdna(kind) else LINK_PCIE) for j, o in enumerate(kinds) if j != i]
    for n, (to, typ) in enumerate(links):
      files[f"{base}/io_links/{n}/properties"] = f"type {typ}\nnode_from {node}\nnode_to {to}\nweight {15 if typ == LINK_XGMI else 20}\n"
    for hwid, ver in zip((GC_HWID, SDMA0_HWID), k["ip"]):
      d = IP_DISCOVERY.format(minor=minor, hwid=hwid)
      for name, v in zip(("major", "minor", "revision"), ver): files[f"{d}/{name}"] = f"{v}\n"
  return files
