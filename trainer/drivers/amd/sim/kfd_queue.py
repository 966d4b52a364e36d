"""KFD's rules for a queue's buffers, ported for the simulated kernel from the Linux kernel's
drivers/gpu/drm/amd/amdkfd: the sizes a node demands (`kfd_queue_ctx_save_restore_size`, kfd_queue.c),
the checks CREATE_QUEUE makes of every buffer (`kfd_queue_acquire_buffers` and `kfd_queue_buffer_get`,
kfd_queue.c) and of its arguments (`set_queue_properties_from_user`, kfd_chardev.c). Each refusal is
EINVAL with the reason KFD prints as a pr_debug line."""
from __future__ import annotations
import errno
from .. import kfd

PAGE = 4096
SGPR_SIZE_PER_CU, LDS_SIZE_PER_CU, HWREG_SIZE_PER_CU = 0x4000, 0x10000, 0x1000
DEBUGGER_BYTES_PER_WAVE, DEBUGGER_BYTES_ALIGN = 32, 64
SIZEOF_HSA_USER_CONTEXT_SAVE_AREA_HEADER = 40
MAX_QUEUE_PRIORITY = 15                  # KFD_MAX_QUEUE_PRIORITY


def _align(x: int, a: int) -> int: return -(-x // a) * a


def _vgpr_size_per_cu(gfxv: int) -> int:
  """kfd_get_vgpr_size_per_cu."""
  if gfxv in (90402, 90010, 90008, 90500): return 0x80000
  if gfxv in (110000, 110001, 120000, 120001): return 0x60000
  return 0x40000


def node_sizes(props: dict) -> dict:
  """The node's ctl_stack_size, cwsr_size (per XCC), debug_memory_size and eop_buffer_size, as
  kfd_queue_ctx_save_restore_size sets them from the node's properties."""
  gfxv = props["gfx_target_version"]
  cu_num = props["simd_count"] // props["simd_per_cu"] // props["num_xcc"]
  if gfxv < 100100: wave_num = min(cu_num * 40, props["array_count"] // props["simd_arrays_per_engine"] * 512)
  else: wave_num = cu_num * 32
  lds = props["lds_size_in_kb"] << 10 if gfxv == 90500 else LDS_SIZE_PER_CU
  wg_data_size = _align(cu_num * (_vgpr_size_per_cu(gfxv) + SGPR_SIZE_PER_CU + lds + HWREG_SIZE_PER_CU), PAGE)
  ctl_stack_size = _align(SIZEOF_HSA_USER_CONTEXT_SAVE_AREA_HEADER + wave_num * (12 if gfxv >= 100100 else 8) + 8, PAGE)
  if gfxv // 10000 * 10000 == 100000: ctl_stack_size = min(ctl_stack_size, 0x7000)
  return {"ctl_stack_size": ctl_stack_size, "cwsr_size": ctl_stack_size + wg_data_size,
          "debug_memory_size": _align(wave_num * DEBUGGER_BYTES_PER_WAVE, DEBUGGER_BYTES_ALIGN),
          "eop_buffer_size": 0x8000 if gfxv == 80002 else 4096}


def _refuse(msg: str): return OSError(errno.EINVAL, f"CREATE_QUEUE: {msg}")


def check_arguments(a):
  """set_queue_properties_from_user: ranges of the plain arguments; the ring size KFD will use."""
  if a.queue_percentage > kfd.MAX_QUEUE_PERCENTAGE: raise _refuse(f"queue percentage {a.queue_percentage} > 100")
  if a.queue_priority > MAX_QUEUE_PRIORITY: raise _refuse(f"queue priority {a.queue_priority} > {MAX_QUEUE_PRIORITY}")
  if a.ring_size and a.ring_size & (a.ring_size - 1): raise _refuse(f"ring size {a.ring_size} is not a power of two")
  return max(a.ring_size, kfd.MIN_QUEUE_RING_SIZE)


def _buffer_get(table, addr: int, expected: int, what: str):
  """kfd_queue_buffer_get: addr must start a mapping of exactly `expected` bytes (any size when 0), in GPU pages."""
  m = table.lookup(addr)
  if m is None: raise _refuse(f"{what} at {addr:#x} is not mapped on gpu_id {table.gpu_id}")
  start, end = m[0], m[1]
  if addr // PAGE != start // PAGE or (expected and addr // PAGE + expected // PAGE != end // PAGE):
    raise _refuse(f"{what}: expected size {expected:#x} not equal to mapping addr {start:#x} size {end - start:#x}")


def acquire_buffers(table, props: dict, sizes: dict, a, ring_size: int):
  """kfd_queue_acquire_buffers for a queue on the GPU whose page table is `table`."""
  aql = a.queue_type == kfd.QUEUE_COMPUTE_AQL
  expected_ring = ring_size // 2 if aql and 70000 <= props["gfx_target_version"] < 90000 else ring_size   # GFX7/8 AQL rings appear twice their size
  _buffer_get(table, a.write_pointer_address, PAGE, "the write pointer's buffer")
  _buffer_get(table, a.read_pointer_address, PAGE, "the read pointer's buffer")
  _buffer_get(table, a.ring_base_address, expected_ring, "the ring")
  if a.queue_type not in (kfd.QUEUE_COMPUTE, kfd.QUEUE_COMPUTE_AQL): return
  if a.eop_buffer_address:
    if a.eop_buffer_size != sizes["eop_buffer_size"]:
      raise _refuse(f"queue eop bo size {a.eop_buffer_size:#x} not equal to node eop buf size {sizes['eop_buffer_size']:#x}")
    _buffer_get(table, a.eop_buffer_address, a.eop_buffer_size, "the EOP buffer")
  if a.ctl_stack_size != sizes["ctl_stack_size"]:
    raise _refuse(f"queue ctl stack size {a.ctl_stack_size:#x} not equal to node ctl stack size {sizes['ctl_stack_size']:#x}")
  if a.ctx_save_restore_size < sizes["cwsr_size"]:
    raise _refuse(f"queue cwsr size {a.ctx_save_restore_size:#x} not sufficient for node cwsr size {sizes['cwsr_size']:#x}")
  total = _align((a.ctx_save_restore_size + sizes["debug_memory_size"]) * props["num_xcc"], PAGE)
  _buffer_get(table, a.ctx_save_restore_address, total, "the context save area")
