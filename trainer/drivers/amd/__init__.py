"""Our own AMD GPU driver over the Linux KFD interface (no HIP, no ROCr, no libhsakmt).

kfd.py (ioctl structs and numbers), hsa.py (packets, queue descriptor, signal, save-area header) and
sdma_packets.py (SDMA encodings): the definitions the driver and the simulator share. os_seam.py (every
OS access: the simulator's seam) -> topology.py (sysfs, the GPUs used) -> memory.py (VA, buffers, GPU
mappings) -> signals.py (signals, events, waits) -> cwsr.py (queue buffer sizes as KFD checks them),
queue_setup.py (CREATE_QUEUE), aql.py (compute queues) and sdma.py (copy queues) -> elf.py (code
objects) and compiler.py (clang/lld) -> device.py (one GPU brought up). sim/ is the simulated KFD that
CI runs all of it against; it imports only the shared definitions.
"""
