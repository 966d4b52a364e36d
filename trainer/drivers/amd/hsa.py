"""The memory layouts the GPU and the driver share, as ctypes: the AQL packets (hsa/hsa.h), the queue
descriptor the command processor reads (`amd_queue_t`, hsa/amd_hsa_queue.h), the signal
(`amd_signal_t`, hsa/amd_hsa_signal.h) and the context-save area header (libhsakmt's
HsaUserContextSaveAreaHeader, hsakmttypes.h; the kernel's SIZEOF_HSA_USER_CONTEXT_SAVE_AREA_HEADER).
Definitions only: the driver (aql.py, signals.py) writes them and the simulator (sim/) reads them;
tests/drivers checks every offset against the system's headers."""
from __future__ import annotations
import ctypes

u16, u32, u64, i64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64


def _struct(name: str, fields: list) -> type:
  return type(name, (ctypes.Structure,), {"_fields_": fields})


dispatch_packet_t = _struct("hsa_kernel_dispatch_packet_t", [
  ("header", u16), ("setup", u16), ("workgroup_size_x", u16), ("workgroup_size_y", u16), ("workgroup_size_z", u16),
  ("reserved0", u16), ("grid_size_x", u32), ("grid_size_y", u32), ("grid_size_z", u32), ("private_segment_size", u32),
  ("group_segment_size", u32), ("kernel_object", u64), ("kernarg_address", u64), ("reserved2", u64),
  ("completion_signal", u64)])
barrier_and_packet_t = _struct("hsa_barrier_and_packet_t", [
  ("header", u16), ("reserved0", u16), ("reserved1", u32), ("dep_signal", u64 * 5), ("reserved2", u64),
  ("completion_signal", u64)])
queue_t = _struct("hsa_queue_t", [
  ("type", u32), ("features", u32), ("base_address", u64), ("doorbell_signal", u64), ("size", u32), ("reserved1", u32),
  ("id", u64)])
amd_queue_t = _struct("amd_queue_t", [
  ("hsa_queue", queue_t), ("reserved1", u32 * 4), ("write_dispatch_id", u64), ("group_segment_aperture_base_hi", u32),
  ("private_segment_aperture_base_hi", u32), ("max_cu_id", u32), ("max_wave_id", u32),
  ("max_legacy_doorbell_dispatch_id_plus_1", u64), ("legacy_doorbell_lock", u32), ("reserved2", u32 * 9),
  ("read_dispatch_id", u64), ("read_dispatch_id_field_base_byte_offset", u32), ("compute_tmpring_size", u32),
  ("scratch_resource_descriptor", u32 * 4), ("scratch_backing_memory_location", u64),
  ("scratch_backing_memory_byte_size", u64), ("scratch_wave64_lane_byte_size", u32), ("queue_properties", u32),
  ("reserved3", u32 * 2), ("queue_inactive_signal", u64), ("reserved4", u32 * 14)])
signal_t = _struct("amd_signal_t", [
  ("kind", i64), ("value", i64), ("event_mailbox_ptr", u64), ("event_id", u32), ("reserved1", u32), ("start_ts", u64),
  ("end_ts", u64), ("queue_ptr", u64), ("reserved3", u32 * 2)])
save_area_header_t = _struct("HsaUserContextSaveAreaHeader", [
  ("ControlStackOffset", u32), ("ControlStackSize", u32), ("WaveStateOffset", u32), ("WaveStateSize", u32),
  ("DebugOffset", u32), ("DebugSize", u32), ("ErrorReason", u64), ("ErrorEventId", u32), ("Reserved1", u32)])

PACKET_BYTES = 64
TYPE_INVALID, TYPE_KERNEL_DISPATCH, TYPE_BARRIER_AND = 1, 2, 3     # hsa_packet_type_t
HEADER_BARRIER, HEADER_ACQUIRE_SCOPE, HEADER_RELEASE_SCOPE = 8, 9, 11   # bit positions in the header
SCOPE_SYSTEM = 2                                                   # HSA_FENCE_SCOPE_SYSTEM
HEADER_FENCES = (1 << HEADER_BARRIER) | (SCOPE_SYSTEM << HEADER_ACQUIRE_SCOPE) | (SCOPE_SYSTEM << HEADER_RELEASE_SCOPE)
BARRIER_DEPS = 5
QUEUE_TYPE_MULTI = 0                      # HSA_QUEUE_TYPE_MULTI
QUEUE_PROPERTIES_IS_PTR64 = 1 << 1        # AMD_QUEUE_PROPERTIES_IS_PTR64
SIGNAL_KIND_USER = 1                      # AMD_SIGNAL_KIND_USER
SIGNAL_BYTES = 64                         # sizeof(amd_signal_t), also its alignment
