"""The Linux KFD interface (/dev/kfd) as ctypes: the ioctl argument structs of uapi
`linux/kfd_ioctl.h` (field names and order as published; tests/drivers checks every offset and size
against the system's header), the ioctl numbers computed as the kernel's _IOC macro does, and the
flag and type constants the driver uses. Nothing here does any I/O.
"""
from __future__ import annotations
import ctypes, functools

u32, u64, s32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

# _IOC(dir, type, nr, size) from asm-generic/ioctl.h: nr bits 0-7, type 8-15, size 16-29, dir 30-31
IOC_WRITE, IOC_READ = 1, 2
KFD_IOCTL_BASE = ord("K")


def _ioc(direction: int, nr: int, struct) -> int:
  return (direction << 30) | (ctypes.sizeof(struct) << 16) | (KFD_IOCTL_BASE << 8) | nr


@functools.lru_cache(maxsize=None)
def array_type(ctype, n: int) -> type:
  """ctype * n, made once: each new ctypes array type is a reference cycle the garbage collector must find."""
  return ctype * n


def _struct(name: str, fields: list) -> type:
  return type(name, (ctypes.Structure,), {"_fields_": fields})


get_version_args = _struct("kfd_ioctl_get_version_args", [("major_version", u32), ("minor_version", u32)])
create_queue_args = _struct("kfd_ioctl_create_queue_args", [
  ("ring_base_address", u64), ("write_pointer_address", u64), ("read_pointer_address", u64), ("doorbell_offset", u64),
  ("ring_size", u32), ("gpu_id", u32), ("queue_type", u32), ("queue_percentage", u32), ("queue_priority", u32),
  ("queue_id", u32), ("eop_buffer_address", u64), ("eop_buffer_size", u64), ("ctx_save_restore_address", u64),
  ("ctx_save_restore_size", u32), ("ctl_stack_size", u32)])
destroy_queue_args = _struct("kfd_ioctl_destroy_queue_args", [("queue_id", u32), ("pad", u32)])
process_device_apertures = _struct("kfd_process_device_apertures", [
  ("lds_base", u64), ("lds_limit", u64), ("scratch_base", u64), ("scratch_limit", u64), ("gpuvm_base", u64),
  ("gpuvm_limit", u64), ("gpu_id", u32), ("pad", u32)])
get_process_apertures_new_args = _struct("kfd_ioctl_get_process_apertures_new_args", [
  ("kfd_process_device_apertures_ptr", u64), ("num_of_nodes", u32), ("pad", u32)])
create_event_args = _struct("kfd_ioctl_create_event_args", [
  ("event_page_offset", u64), ("event_trigger_data", u32), ("event_type", u32), ("auto_reset", u32), ("node_id", u32),
  ("event_id", u32), ("event_slot_index", u32)])
destroy_event_args = _struct("kfd_ioctl_destroy_event_args", [("event_id", u32), ("pad", u32)])
memory_exception_failure = _struct("kfd_memory_exception_failure", [
  ("NotPresent", u32), ("ReadOnly", u32), ("NoExecute", u32), ("imprecise", u32)])
hsa_memory_exception_data = _struct("kfd_hsa_memory_exception_data", [
  ("failure", memory_exception_failure), ("va", u64), ("gpu_id", u32), ("ErrorType", u32)])
hsa_hw_exception_data = _struct("kfd_hsa_hw_exception_data", [
  ("reset_type", u32), ("reset_cause", u32), ("memory_lost", u32), ("gpu_id", u32)])
event_data_union = type("kfd_event_data_union", (ctypes.Union,), {"_fields_": [
  ("memory_exception_data", hsa_memory_exception_data), ("hw_exception_data", hsa_hw_exception_data)]})
event_data = type("kfd_event_data", (ctypes.Structure,), {"_anonymous_": ("u",), "_fields_": [
  ("u", event_data_union), ("kfd_event_data_ext", u64), ("event_id", u32), ("pad", u32)]})
wait_events_args = _struct("kfd_ioctl_wait_events_args", [
  ("events_ptr", u64), ("num_events", u32), ("wait_for_all", u32), ("timeout", u32), ("wait_result", u32)])
acquire_vm_args = _struct("kfd_ioctl_acquire_vm_args", [("drm_fd", u32), ("gpu_id", u32)])
alloc_memory_of_gpu_args = _struct("kfd_ioctl_alloc_memory_of_gpu_args", [
  ("va_addr", u64), ("size", u64), ("handle", u64), ("mmap_offset", u64), ("gpu_id", u32), ("flags", u32)])
free_memory_of_gpu_args = _struct("kfd_ioctl_free_memory_of_gpu_args", [("handle", u64)])
map_memory_to_gpu_args = _struct("kfd_ioctl_map_memory_to_gpu_args", [
  ("handle", u64), ("device_ids_array_ptr", u64), ("n_devices", u32), ("n_success", u32)])
unmap_memory_from_gpu_args = _struct("kfd_ioctl_unmap_memory_from_gpu_args", [
  ("handle", u64), ("device_ids_array_ptr", u64), ("n_devices", u32), ("n_success", u32)])
# KFD 1.13 (not in every distribution's header): set up the runtime before queues are made
runtime_enable_args = _struct("kfd_ioctl_runtime_enable_args", [("r_debug", u64), ("mode_mask", u32), ("capabilities_mask", u32)])

# the layouts tests/drivers compares with the header (runtime_enable is newer than Debian's header)
HEADER_STRUCTS = [get_version_args, create_queue_args, destroy_queue_args, process_device_apertures,
                  get_process_apertures_new_args, create_event_args, destroy_event_args, memory_exception_failure,
                  hsa_memory_exception_data, hsa_hw_exception_data, event_data, wait_events_args, acquire_vm_args,
                  alloc_memory_of_gpu_args, free_memory_of_gpu_args, map_memory_to_gpu_args, unmap_memory_from_gpu_args]

IOC_RW = IOC_READ | IOC_WRITE
GET_VERSION = _ioc(IOC_READ, 0x01, get_version_args)
CREATE_QUEUE = _ioc(IOC_RW, 0x02, create_queue_args)
DESTROY_QUEUE = _ioc(IOC_RW, 0x03, destroy_queue_args)
CREATE_EVENT = _ioc(IOC_RW, 0x08, create_event_args)
DESTROY_EVENT = _ioc(IOC_WRITE, 0x09, destroy_event_args)
WAIT_EVENTS = _ioc(IOC_RW, 0x0C, wait_events_args)
GET_PROCESS_APERTURES_NEW = _ioc(IOC_RW, 0x14, get_process_apertures_new_args)
ACQUIRE_VM = _ioc(IOC_WRITE, 0x15, acquire_vm_args)
ALLOC_MEMORY_OF_GPU = _ioc(IOC_RW, 0x16, alloc_memory_of_gpu_args)
FREE_MEMORY_OF_GPU = _ioc(IOC_WRITE, 0x17, free_memory_of_gpu_args)
MAP_MEMORY_TO_GPU = _ioc(IOC_RW, 0x18, map_memory_to_gpu_args)
UNMAP_MEMORY_FROM_GPU = _ioc(IOC_RW, 0x19, unmap_memory_from_gpu_args)
RUNTIME_ENABLE = _ioc(IOC_RW, 0x25, runtime_enable_args)
# the header's macro names of the numbers above, for the layout test
IOCTL_NAMES = {"GET_VERSION": GET_VERSION, "CREATE_QUEUE": CREATE_QUEUE, "DESTROY_QUEUE": DESTROY_QUEUE,
               "CREATE_EVENT": CREATE_EVENT, "DESTROY_EVENT": DESTROY_EVENT, "WAIT_EVENTS": WAIT_EVENTS,
               "GET_PROCESS_APERTURES_NEW": GET_PROCESS_APERTURES_NEW, "ACQUIRE_VM": ACQUIRE_VM,
               "ALLOC_MEMORY_OF_GPU": ALLOC_MEMORY_OF_GPU, "FREE_MEMORY_OF_GPU": FREE_MEMORY_OF_GPU,
               "MAP_MEMORY_TO_GPU": MAP_MEMORY_TO_GPU, "UNMAP_MEMORY_FROM_GPU": UNMAP_MEMORY_FROM_GPU}

MIN_MAJOR_VERSION = 1
RUNTIME_ENABLE_MINOR = 13       # KFD 1.13 added RUNTIME_ENABLE; ROCr calls it, once the VMs are acquired, before queues
RUNTIME_ENABLE_MODE_ENABLE = 1  # KFD_RUNTIME_ENABLE_MODE_ENABLE_MASK (without it the call disables the runtime)

# KFD_IOC_ALLOC_MEM_FLAGS_*
MEM_VRAM, MEM_GTT, MEM_USERPTR, MEM_DOORBELL, MEM_MMIO_REMAP = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
MEM_WRITABLE, MEM_EXECUTABLE, MEM_PUBLIC, MEM_NO_SUBSTITUTE = 1 << 31, 1 << 30, 1 << 29, 1 << 28
MEM_AQL_QUEUE_MEM, MEM_COHERENT, MEM_UNCACHED = 1 << 27, 1 << 26, 1 << 25
MEM_TYPES = MEM_VRAM | MEM_GTT | MEM_USERPTR | MEM_DOORBELL | MEM_MMIO_REMAP

# KFD_IOC_QUEUE_TYPE_*
QUEUE_COMPUTE, QUEUE_SDMA, QUEUE_COMPUTE_AQL, QUEUE_SDMA_XGMI = 0, 1, 2, 3
MIN_QUEUE_RING_SIZE = 1024      # KFD_MIN_QUEUE_RING_SIZE, bytes
MAX_QUEUE_PERCENTAGE, NORMAL_QUEUE_PRIORITY = 100, 7

# KFD_IOC_EVENT_* and KFD_IOC_WAIT_RESULT_*
EVENT_SIGNAL, EVENT_HW_EXCEPTION, EVENT_MEMORY = 0, 3, 8
WAIT_COMPLETE, WAIT_TIMEOUT, WAIT_FAIL = 0, 1, 2
SIGNAL_EVENT_LIMIT = 4096       # KFD_SIGNAL_EVENT_LIMIT: slots of 8 bytes in the event page
EVENT_SLOT_BYTES = 8

# mmap offsets of /dev/kfd: KFD_MMAP_TYPE_* in the top bits (kfd_priv.h), a doorbell page per GPU
MMAP_TYPE_SHIFT = 62
MMAP_TYPE_DOORBELL = 0x3 << MMAP_TYPE_SHIFT
MMAP_GPU_ID_SHIFT = 46
DOORBELL_PAGE_BYTES = 8192      # SOC15: 1024 doorbells of 8 bytes (two 4 KiB pages) per process and GPU


class AmdError(RuntimeError):
  """A failure of the AMD driver or the GPU, in words (which call, which GPU, what went wrong)."""


class OutOfDeviceMemory(AmdError):
  """KFD refused an allocation for want of memory (ENOMEM)."""


class GpuFault(AmdError):
  """The GPU reported a memory fault or a hardware exception (KFD MEMORY / HW_EXCEPTION event)."""
