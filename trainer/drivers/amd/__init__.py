"""Our own AMD GPU driver over the Linux KFD interface (no HIP, no ROCr, no libhsakmt).

kfd.py (ioctl structs and numbers) -> os_seam.py (every OS access: the simulator's seam) ->
topology.py (sysfs) -> memory.py (VA, buffers, GPU mappings) -> signals.py (signals, events, waits) ->
aql.py (compute queues, dispatch and barrier packets) and sdma.py (copy queues, packets per SDMA
version) -> elf.py (code objects: metadata, kernel descriptors) and compiler.py (clang/lld) ->
device.py (one GPU brought up). sim/ is the simulated KFD that CI runs all of it against.
"""
