"""The sizes of a compute queue's buffers on one GPU node, as KFD checks them at CREATE_QUEUE
(kfd_queue.c, kfd_queue_acquire_buffers): the control stack and the context save area per XCC
(`ctl_stack_size`, `ctx_save_restore_size`), the debugger's area per XCC, the EOP buffer, and the
save-area buffer, one mapping of ALIGN((save area + debugger area) * XCCs, 4 KiB).

Where the kernel publishes the node's `cwsr_size` and `ctl_stack_size` in sysfs (Linux 6.18+), those
are used; else the kernel's own formula (kfd_queue_ctx_save_restore_size), which needs the size of a
CU's register file: known here for the GC versions the kernel lists, and a clear error for others
rather than a guess (a save area too small is memory corruption at the first preemption)."""
from __future__ import annotations
from dataclasses import dataclass
from .kfd import AmdError

PAGE = 4096
SAVE_AREA_HEADER_BYTES = 40            # SIZEOF_HSA_USER_CONTEXT_SAVE_AREA_HEADER
SGPR_BYTES_PER_CU, LDS_BYTES_PER_CU, HWREG_BYTES_PER_CU = 0x4000, 0x10000, 0x1000
DEBUG_BYTES_PER_WAVE, DEBUG_ALIGN = 32, 64
EOP_BYTES = 4096                       # eop_buffer_size of every node from gfx8 on (Tonga aside)
# VGPR (+AGPR) bytes saved per CU, by gfx_target_version: kfd_get_vgpr_size_per_cu's explicit cases
VGPR_BYTES_PER_CU = {90008: 0x80000, 90010: 0x80000, 90402: 0x80000, 90500: 0x80000,
                     110000: 0x60000, 110001: 0x60000, 120000: 0x60000, 120001: 0x60000}


def _align(x: int, a: int) -> int: return -(-x // a) * a


@dataclass(frozen=True)
class QueueSizes:
  ctl_stack: int       # ctl_stack_size
  per_xcc: int         # ctx_save_restore_size (one XCC's save area, the control stack included)
  debug: int           # the debugger's area after each XCC's save area
  xcc: int
  eop: int = EOP_BYTES

  @property
  def total(self) -> int:
    """Bytes of the save-area buffer, which must be one mapping of exactly this size."""
    return _align((self.per_xcc + self.debug) * self.xcc, PAGE)


def queue_sizes(gpu) -> QueueSizes:
  """The sizes for a topology.Gpu (its sysfs properties)."""
  p, v = gpu.props, gpu.props["gfx_target_version"]
  cus = p["simd_count"] // p["simd_per_cu"] // gpu.xcc_count
  if v < 100100: waves = min(cus * 40, p["array_count"] // p["simd_arrays_per_engine"] * 512)   # gfx9: at most 512 per SE
  else: waves = cus * 32
  debug = _align(waves * DEBUG_BYTES_PER_WAVE, DEBUG_ALIGN)
  if "cwsr_size" in p and "ctl_stack_size" in p: return QueueSizes(p["ctl_stack_size"], p["cwsr_size"], debug, gpu.xcc_count)
  if v not in VGPR_BYTES_PER_CU:
    raise AmdError(f"GPU node {gpu.node} ({gpu.target}, gfx_target_version {v}): KFD publishes no cwsr_size for it (Linux 6.18+ "
                   "does) and this driver does not know the register file of that GC version to size the context save area")
  lds = p["lds_size_in_kb"] << 10 if v == 90500 else LDS_BYTES_PER_CU
  ctl = _align(SAVE_AREA_HEADER_BYTES + waves * (12 if v >= 100100 else 8) + 8, PAGE)
  if v // 10000 == 10: ctl = min(ctl, 0x7000)
  wg_data = _align(cus * (VGPR_BYTES_PER_CU[v] + SGPR_BYTES_PER_CU + lds + HWREG_BYTES_PER_CU), PAGE)
  return QueueSizes(ctl, ctl + wg_data, debug, gpu.xcc_count)
