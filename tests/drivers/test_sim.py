"""The driver against the simulated KFD: bring-up reads what sysfs says, KFD's rules are enforced as
errno errors, GPU faults come back as clear errors (a peer's buffer used without being mapped, ring
overflow, a wait nothing will satisfy), copies wrap the SDMA ring, and the engines run queues in an
order the driver did not ask for, so a missing wait shows up as wrong data."""
import ctypes, errno
import numpy as np
import pytest
from trainer.drivers.amd import kfd, aql, sdma
from trainer.drivers.amd import device as driver
from trainer.drivers.amd.kfd import GpuFault
from amd_helpers import needs_clang


def test_bring_up_reads_the_topology(machine):
  machine(["gfx942", "gfx1100", "gfx950"])
  p = driver.process()
  assert p.version >= (1, 13)
  assert [g.target for g in p.gpus] == ["gfx942", "gfx1100", "gfx950"]
  assert [g.wave_size for g in p.gpus] == [64, 32, 64]
  assert [g.cu_count for g in p.gpus] == [304, 96, 256]
  assert [g.sdma_version for g in p.gpus] == [(4, 4, 2), (6, 0, 0), (4, 4, 5)]
  assert [g.lds_bytes for g in p.gpus] == [64 << 10, 64 << 10, 160 << 10]
  a, b, c = p.gpus
  assert a.links[c.node] == 11 and a.links[b.node] == 2    # XGMI between the CDNA GPUs of one hive, PCIe to the Radeon


def test_kfd_rules_are_errno_errors(machine):
  sim = machine(["gfx942"])
  p = driver.process()
  g = p.gpus[0]
  bo = p.memory.alloc(8192, g.gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE)
  with pytest.raises(OSError) as e:   # a second buffer over the same addresses
    sim.ioctl(p.kfd_fd, kfd.ALLOC_MEMORY_OF_GPU, kfd.alloc_memory_of_gpu_args(va_addr=bo.va, size=4096, gpu_id=g.gpu_id, flags=kfd.MEM_VRAM))
  assert e.value.errno == errno.EINVAL
  with pytest.raises(OSError) as e:   # freed while still mapped
    sim.ioctl(p.kfd_fd, kfd.FREE_MEMORY_OF_GPU, kfd.free_memory_of_gpu_args(handle=bo.handle))
  assert e.value.errno == errno.EBUSY
  with pytest.raises(OSError) as e:   # a ring that is not a power of two
    sim.ioctl(p.kfd_fd, kfd.CREATE_QUEUE, kfd.create_queue_args(ring_base_address=bo.va, ring_size=3000, gpu_id=g.gpu_id, queue_type=kfd.QUEUE_SDMA))
  assert e.value.errno == errno.EINVAL
  with pytest.raises(OSError) as e:   # an argument struct of the wrong size
    sim.ioctl(p.kfd_fd, kfd.MAP_MEMORY_TO_GPU, kfd.get_version_args())
  assert e.value.errno == errno.EINVAL
  p.memory.free(bo)
  assert bo.handle not in sim.bos


def _host_buffer(gpu, data: bytes):
  bo = gpu.alloc(len(data), host=True)
  ctypes.memmove(bo.va, data, len(data))
  return bo


def test_sdma_copies_between_gpus_and_wrap_the_ring(machine):
  machine(["gfx942", "gfx942"])
  p = driver.process()
  a, b = p.device(0), p.device(1)
  src = _host_buffer(a, bytes(range(256)) * 64)            # 16 KiB
  dst = b.alloc(16384)                                     # VRAM of the other GPU
  p.memory.map(dst, [a.gpu.gpu_id])                        # peer-mapped into GPU 0's page table
  back = _host_buffer(a, b"\0" * 16384)
  for i in range(sdma.RING_BYTES // 28 // 30 + 2):         # enough packets to go round the ring
    for _ in range(30): a.copies.copy(dst.va, src.va, 16384)
    a.copies.copy(back.va, dst.va, 16384)
    s = a.mark_copies()
    p.signals.wait(s, "copies")
    p.signals.release(s)
  assert a.copies.wptr.value > sdma.RING_BYTES
  assert bytes(back.view(0, 16384)) == bytes(range(256)) * 64


def test_peer_buffer_not_mapped_is_a_memory_fault(machine):
  machine(["gfx942", "gfx942"])
  p = driver.process()
  a, b = p.device(0), p.device(1)
  theirs = b.alloc(4096)                      # on GPU 1, mapped only there
  mine = _host_buffer(a, b"\1" * 4096)
  a.copies.copy(mine.va, theirs.va, 4096)
  s = a.mark_copies()
  with pytest.raises(GpuFault, match=f"memory fault on gpu_id {a.gpu.gpu_id} at address {theirs.va:#x}.*NotPresent"):
    p.signals.wait(s, "a copy from a buffer GPU 0 does not map")


def test_ring_overflow_is_reported(machine):
  machine(["gfx942"])
  p = driver.process()
  q = p.device(0).compute
  q.q.write_dispatch_id = aql.RING_PACKETS + 5               # a driver that does not wait for room
  p.os.doorbell(q.doorbell, aql.RING_PACKETS + 4)
  with pytest.raises(GpuFault, match="hardware exception"):
    p.signals.wait_until(lambda: False, "anything")
  assert "ring overflow" in p.os.hw_fault[2]


def test_a_wait_that_nothing_satisfies_is_a_hang(machine):
  machine(["gfx942"])
  p = driver.process()
  d = p.device(0)
  never = p.signals.new()
  d.compute.barrier([never])                                  # waits for a signal no queue will complete
  s = d.mark_compute()
  with pytest.raises(GpuFault, match="GPU hang"):
    p.signals.wait(s, "a marker behind an unsatisfiable barrier")
  assert "stuck at packet" in p.os.hw_fault[2]


@needs_clang
def test_missing_waits_show_as_wrong_data(machine):
  """The engines run asynchronously and the queues in random order: a copy of a kernel's output needs
  the wait the runtime puts in (compute marker -> SDMA poll), or it sometimes copies what was there before."""
  from trainer.core.codegen.amd import render_accumulate, source
  from trainer.core.dtypes import dtypes
  from trainer.drivers.amd.compiler import compile_source
  machine(["gfx942"], seed=1)
  p = driver.process()
  d = p.device(0)
  r = render_accumulate(dtypes.int32, "sum", None)
  prog = d.load(compile_source(source([r]), "gfx942"))[r.name]
  y = _host_buffer(d, np.full(64, 5, np.int32).tobytes())
  stale = []
  for ordered in [False] * 10 + [True] * 10:
    x, out = _host_buffer(d, np.arange(64, dtype=np.int32).tobytes()), _host_buffer(d, b"\0" * 256)
    d.launch(prog, [x.va, y.va, 64, 256], (1, 1, 1), (256, 1, 1))    # x += 5
    if ordered: d.copies.wait(d.mark_compute(interrupt=False))
    d.copies.copy(out.va, x.va, 256)
    p.signals.wait(d.mark_copies(), "the copy")
    p.signals.wait(d.mark_compute(), "the kernel")
    got = np.frombuffer(bytes(out.view(0, 256)), np.int32)
    if ordered: np.testing.assert_array_equal(got, np.arange(64) + 5)
    else: stale.append(bool((got == np.arange(64)).all()))
  assert any(stale) and not all(stale), stale   # without the wait, the copy raced the kernel


def test_the_simulator_refuses_what_kfd_and_the_hardware_refuse(machine):
  """AQL_QUEUE_MEM is a half-size BO mapped twice; a ring mapping of the wrong size is refused; GPU
  writes need WRITABLE and fetches EXECUTABLE; a signal event fires only from a written mailbox slot."""
  from trainer.drivers.amd.sim.memory import MemoryFault
  sim = machine(["gfx942"])
  p = driver.process()
  g = p.gpus[0].gpu_id
  host = kfd.MEM_GTT | kfd.MEM_WRITABLE
  with pytest.raises(kfd.AmdError): p.memory.alloc(65536, g, host | kfd.MEM_AQL_QUEUE_MEM, cpu=True)   # drm_gem_mmap_obj: 64 KiB of a 32 KiB BO
  aql_bo = p.memory.alloc(65536, g, host | kfd.MEM_AQL_QUEUE_MEM)
  assert [(s - aql_bo.va, e - s) for s, e, *_ in sim.gpus[0].table.maps if _[0] is sim.bos[aql_bo.handle]] == [(0, 32768), (32768, 32768)]
  ring, ptrs = p.memory.alloc(8192, g, host | kfd.MEM_EXECUTABLE), p.memory.alloc(4096, g, host)
  with pytest.raises(OSError) as e:     # a 4 KiB ring in an 8 KiB mapping
    sim.ioctl(p.kfd_fd, kfd.CREATE_QUEUE, kfd.create_queue_args(ring_base_address=ring.va, ring_size=4096, gpu_id=g, queue_type=kfd.QUEUE_SDMA,
                                                               read_pointer_address=ptrs.va, write_pointer_address=ptrs.va + 8))
  assert e.value.errno == errno.EINVAL and "expected size 0x1000" in str(e.value)
  ro = p.memory.alloc(4096, g, kfd.MEM_GTT)
  table = sim.gpus[0].table
  with pytest.raises(MemoryFault) as f: table.access(ro.va, 4, "a write", write=True)
  assert f.value.kind == "ReadOnly"
  with pytest.raises(MemoryFault) as f: table.access(ptrs.va, 4, "a packet fetch", execute=True)
  assert f.value.kind == "NoExecute"
  ev = p.signals.event_id
  sim.interrupt(ev, 32)                                          # no mailbox written: nothing fires
  assert not sim.events[ev]["signaled"]
  ctypes.c_uint64.from_address(p.signals.mailbox).value = ev
  sim.interrupt(ev + (1 << 28), 28)                              # the SDMA trap's 28 bits of context
  assert sim.events[ev]["signaled"] and ctypes.c_uint64.from_address(p.signals.mailbox).value == (1 << 64) - 1


def test_the_cpu_touching_vram_it_never_mapped_faults(tmp_path):
  import subprocess, sys, os
  code = ("import ctypes; from trainer.drivers.amd import device as d, kfd; p = d.process(); "
          "bo = p.memory.alloc(4096, p.gpus[0].gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE); print('read', flush=True); "
          "ctypes.c_int.from_address(bo.va).value")
  r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRAINER_AMD_SIM": "gfx942"}, capture_output=True, text=True,
                     cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert "read" in r.stdout and r.returncode == -11, (r.returncode, r.stderr[-2000:])   # SIGSEGV, as on hardware
