"""The sysfs files KFD and amdgpu publish, for a simulated machine: a CPU node 0 and one node per GPU
of the chosen kinds, with the properties the driver reads (values of the real boards: MI300X in SPX
mode, MI350X, Radeon 7900 XTX), memory banks, links (XGMI between GPUs of one hive, else PCIe) and
each GPU's ip_discovery versions."""
from __future__ import annotations
from ..topology import TOPOLOGY, IP_DISCOVERY, GC_HWID, SDMA0_HWID, KNOWN_IPS

GIB = 1 << 30
LINK_XGMI, LINK_PCIE = 11, 2      # io_links type (CRAT_IOLINK_TYPE_*)
HIVE_ID = 0x5A17E0000001          # the hive id every CDNA GPU of a simulated machine shares
FIRST_RENDER_MINOR = 128
KINDS = {
  "gfx942": dict(gfx_target_version=90402, simd_count=1216, simd_per_cu=4, num_xcc=8, wave_front_size=64, lds_size_in_kb=64,
                 vram=192 * GIB, device_id=0x74A1, num_sdma_engines=2, num_sdma_xgmi_engines=14, max_engine_clk_fcompute=2100),
  "gfx950": dict(gfx_target_version=90500, simd_count=1024, simd_per_cu=4, num_xcc=8, wave_front_size=64, lds_size_in_kb=160,
                 vram=288 * GIB, device_id=0x75A0, num_sdma_engines=2, num_sdma_xgmi_engines=14, max_engine_clk_fcompute=2400),
  "gfx1100": dict(gfx_target_version=110000, simd_count=192, simd_per_cu=2, num_xcc=1, wave_front_size=32, lds_size_in_kb=64,
                  vram=24 * GIB, device_id=0x744C, num_sdma_engines=2, num_sdma_xgmi_engines=0, max_engine_clk_fcompute=2500),
}


def gpu_id(i: int) -> int: return 0x3A00 + 0x111 * i   # KFD gpu_ids are hashes; any distinct non-zero values do


def tree(kinds: list[str]) -> dict[str, str]:
  """path -> file content for every file of the simulated machine (directories are implied)."""
  files = {f"{TOPOLOGY}/0/gpu_id": "0\n", f"{TOPOLOGY}/0/properties": "cpu_cores_count 2\nsimd_count 0\nmem_banks_count 1\n"}
  for i, kind in enumerate(kinds):
    if kind not in KINDS: raise ValueError(f"TRAINER_AMD_SIM: unknown GPU kind {kind!r} (known: {', '.join(KINDS)})")
    k, node, minor = KINDS[kind], i + 1, FIRST_RENDER_MINOR + i
    base = f"{TOPOLOGY}/{node}"
    props = {"cpu_cores_count": 0, "simd_count": k["simd_count"], "mem_banks_count": 1, "io_links_count": len(kinds),
             "gfx_target_version": k["gfx_target_version"], "simd_per_cu": k["simd_per_cu"], "num_xcc": k["num_xcc"],
             "wave_front_size": k["wave_front_size"], "lds_size_in_kb": k["lds_size_in_kb"], "drm_render_minor": minor,
             "vendor_id": 0x1002, "device_id": k["device_id"], "num_sdma_engines": k["num_sdma_engines"],
             "num_sdma_xgmi_engines": k["num_sdma_xgmi_engines"], "num_sdma_queues_per_engine": 8, "num_cp_queues": 24,
             "max_waves_per_simd": 8, "local_mem_size": k["vram"], "max_engine_clk_fcompute": k["max_engine_clk_fcompute"],
             "hive_id": HIVE_ID if k["num_xcc"] > 1 else 0, "location_id": 0x100 * (i + 1), "unique_id": 0xA3D0 + i}
    files[f"{base}/gpu_id"] = f"{gpu_id(i)}\n"
    files[f"{base}/properties"] = "".join(f"{key} {v}\n" for key, v in props.items())
    files[f"{base}/mem_banks/0/properties"] = f"heap_type 1\nsize_in_bytes {k['vram']}\nwidth 4096\n"
    links = [(0, LINK_PCIE)] + [(j + 1, LINK_XGMI if KINDS[o]["num_xcc"] > 1 and k["num_xcc"] > 1 else LINK_PCIE)
                                for j, o in enumerate(kinds) if j != i]
    for n, (to, typ) in enumerate(links):
      files[f"{base}/io_links/{n}/properties"] = f"type {typ}\nnode_from {node}\nnode_to {to}\nweight {15 if typ == LINK_XGMI else 20}\n"
    gc, sdma = KNOWN_IPS[kind]
    for hwid, ver in ((GC_HWID, gc), (SDMA0_HWID, sdma)):
      d = IP_DISCOVERY.format(minor=minor, hwid=hwid)
      for name, v in zip(("major", "minor", "revision"), ver): files[f"{d}/{name}"] = f"{v}\n"
  return files
