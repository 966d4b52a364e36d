"""The KFD topology in sysfs: one node per agent (CPU nodes have gpu_id 0), each with a `properties`
file of "key value" lines, memory banks and links; and the IP versions of each GPU (graphics core,
SDMA) from the DRM device's ip_discovery tree, which the packet encodings depend on.

KFD lists every GPU node, an APU's or a desktop CPU's integrated GPU too (a Ryzen 7000's gfx1036 may be
the first): `usable` keeps the targets this driver supports and, as ROCm does, the ones
ROCR_VISIBLE_DEVICES names (indices among those, or GPU-<unique_id in hex> as rocminfo prints it)."""
from __future__ import annotations
import os
from dataclasses import dataclass, field
from .kfd import AmdError

TOPOLOGY = "/sys/devices/virtual/kfd/kfd/topology/nodes"
IP_DISCOVERY = "/sys/class/drm/renderD{minor}/device/ip_discovery/die/0/{hwid}/0"
GC_HWID, SDMA0_HWID = 11, 42          # hardware ids of soc15_hw_ip.h: graphics core, SDMA engine 0
HEAP_FB_PUBLIC, HEAP_FB_PRIVATE = 1, 2  # mem_banks heap_type of device memory (HSA_HEAPTYPE_FRAME_BUFFER_*)
# IP versions by target where a kernel has no ip_discovery tree (older kernels): GC, SDMA
SUPPORTED_TARGETS = ("gfx942", "gfx950", "gfx1100")   # what the codegen, the SDMA packets and the queue sizes know
VISIBLE_ENV = "ROCR_VISIBLE_DEVICES"
KNOWN_IPS = {"gfx942": ((9, 4, 3), (4, 4, 2)), "gfx950": ((9, 5, 0), (4, 4, 5)), "gfx1100": ((11, 0, 0), (6, 0, 0))}


def parse_properties(text: str) -> dict[str, int]:
  out = {}
  for line in text.splitlines():
    parts = line.split()
    if len(parts) == 2: out[parts[0]] = int(parts[1])
  return out


def gfx_name(version: int) -> str:
  """gfx_target_version (decimal MMmmss, e.g. 90402) -> 'gfx942'."""
  return f"gfx{version // 10000}{version // 100 % 100:x}{version % 100:x}"


# PCI device id -> marketing name, as libdrm's amdgpu.ids lists them (what ROCm reports), for the GPUs we target
MARKETING_NAMES = {0x74A1: "AMD Instinct MI300X", 0x74B5: "AMD Instinct MI300X VF", 0x74A5: "AMD Instinct MI325X",
                   0x75A0: "AMD Instinct MI350X", 0x75B0: "AMD Instinct MI350X VF", 0x75A3: "AMD Instinct MI355X",
                   0x75B3: "AMD Instinct MI355X VF", 0x744C: "AMD Radeon RX 7900 XTX"}


@dataclass
class Gpu:
  node: int
  gpu_id: int
  props: dict
  vram_bytes: int
  links: dict = field(default_factory=dict)       # node_to -> link type (io_links: 11 XGMI, 2 PCIe)
  gc_version: tuple = (0, 0, 0)
  sdma_version: tuple = (0, 0, 0)

  @property
  def target(self) -> str: return gfx_name(self.props["gfx_target_version"])
  @property
  def name(self) -> str:
    """The marketing name (libdrm's amdgpu.ids) of the node's PCI device id, else 'AMD <gfx target>'."""
    return MARKETING_NAMES.get(self.props.get("device_id"), f"AMD {self.target}")
  @property
  def wave_size(self) -> int: return 64 if self.target.startswith("gfx9") else 32
  @property
  def cu_count(self) -> int: return self.props["simd_count"] // self.props["simd_per_cu"]
  @property
  def render_minor(self) -> int: return self.props["drm_render_minor"]
  @property
  def xcc_count(self) -> int: return max(1, self.props.get("num_xcc", 1))
  @property
  def lds_bytes(self) -> int: return self.props.get("lds_size_in_kb", 64) * 1024


def read_gpus(os_) -> list[Gpu]:
  """The GPU nodes in node order (CPU nodes skipped)."""
  gpus = []
  for n in sorted(os_.listdir(TOPOLOGY), key=int):
    base = f"{TOPOLOGY}/{n}"
    gpu_id = int(os_.read_text(f"{base}/gpu_id").strip() or 0)
    if gpu_id == 0: continue
    props = parse_properties(os_.read_text(f"{base}/properties"))
    vram = 0
    if os_.exists(f"{base}/mem_banks"):
      for b in os_.listdir(f"{base}/mem_banks"):
        bank = parse_properties(os_.read_text(f"{base}/mem_banks/{b}/properties"))
        if bank.get("heap_type") in (HEAP_FB_PUBLIC, HEAP_FB_PRIVATE): vram += bank.get("size_in_bytes", 0)
    links = {}
    for kind in ("io_links", "p2p_links"):
      if not os_.exists(f"{base}/{kind}"): continue
      for ln in os_.listdir(f"{base}/{kind}"):
        lp = parse_properties(os_.read_text(f"{base}/{kind}/{ln}/properties"))
        links[lp["node_to"]] = lp.get("type", 0)
    g = Gpu(int(n), gpu_id, props, vram, links)
    g.gc_version, g.sdma_version = _ip_version(os_, g, GC_HWID, 0), _ip_version(os_, g, SDMA0_HWID, 1)
    gpus.append(g)
  return gpus


def _ip_version(os_, g: Gpu, hwid: int, which: int) -> tuple:
  path = IP_DISCOVERY.format(minor=g.render_minor, hwid=hwid)
  if os_.exists(path):
    return tuple(int(os_.read_text(f"{path}/{k}").strip()) for k in ("major", "minor", "revision"))
  if g.target in KNOWN_IPS: return KNOWN_IPS[g.target][which]
  raise RuntimeError(f"GPU node {g.node} ({g.target}): no ip_discovery tree in sysfs and no known IP versions")


def usable(gpus: list[Gpu], visible: str | None = None) -> list[Gpu]:
  """The GPUs this driver runs on, in node order: supported targets, then those `visible` (default: the
  ROCR_VISIBLE_DEVICES setting) names, in the order it names them."""
  gpus = [g for g in gpus if g.target in SUPPORTED_TARGETS]
  visible = os.environ.get(VISIBLE_ENV) if visible is None else visible
  if not visible: return gpus
  out = []
  for item in (v.strip() for v in visible.split(",") if v.strip()):
    if item.isdigit() and int(item) < len(gpus): out.append(gpus[int(item)])
    elif item.startswith("GPU-") and any(f"{g.props.get('unique_id', 0):016x}" == item[4:].lower() for g in gpus):
      out.append(next(g for g in gpus if f"{g.props.get('unique_id', 0):016x}" == item[4:].lower()))
    else: raise AmdError(f"{VISIBLE_ENV}={visible}: {item!r} names none of the {len(gpus)} supported GPUs ({', '.join(g.target for g in gpus)})")
  return out
