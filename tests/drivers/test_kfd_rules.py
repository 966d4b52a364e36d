"""The driver against the rules real KFD and real hardware hold it to (each test is one defect of
the review in ../shared/notes/AMD_REVIEW.md, D1-D13), over the simulator that enforces them: buffers
as CREATE_QUEUE wants them, execute permission on rings, kernel arguments and buffers kept until the
work using them has finished (the engines run asynchronously), interrupted waits, the GPUs a
desktop's KFD lists, failure paths that leave nothing behind, code in VRAM, the runtime enabled as
ROCr does, the context-save header filled as libhsakmt does, grids that fit 32 bits."""
import ctypes, errno
import numpy as np
import pytest
from trainer.core import Tensor
from trainer.drivers.amd import kfd, hsa
from trainer.drivers.amd import device as driver
from trainer.drivers.amd.kfd import AmdError
from amd_helpers import needs_clang


def _host(gpu, data: bytes):
  bo = gpu.alloc(len(data), host=True)
  ctypes.memmove(bo.va, data, len(data))
  return bo


def test_d1_aql_ring_is_one_mapping_of_its_size(machine):
  sim = machine(["gfx942"])
  d = driver.process().device(0)
  start, end, bo, _ = sim.gpus[0].table.lookup(d.compute.ring.va)
  assert (start, end - start) == (d.compute.ring.va, d.compute.ring.size) and not bo.flags & kfd.MEM_AQL_QUEUE_MEM


def test_d2_unknown_gc_version_without_sysfs_sizes_is_a_clear_error():
  from trainer.drivers.amd import cwsr, topology
  props = {"gfx_target_version": 110501, "simd_count": 80, "simd_per_cu": 2, "num_xcc": 1, "array_count": 4,
           "simd_arrays_per_engine": 2, "lds_size_in_kb": 64}
  g = topology.Gpu(3, 0x1234, props, 1 << 30)
  with pytest.raises(AmdError, match="gfx1151.*cwsr_size"): cwsr.queue_sizes(g)
  g.props = {**props, "cwsr_size": 0x1234000, "ctl_stack_size": 0x5000}     # a kernel that publishes them: used as they are
  assert (cwsr.queue_sizes(g).ctl_stack, cwsr.queue_sizes(g).per_xcc) == (0x5000, 0x1234000)


def test_d3_rings_are_fetched_with_execute_permission(machine):
  machine(["gfx942"])
  p = driver.process()
  d = p.device(0)
  for s in (d.mark_compute(), d.mark_copies()): p.signals.wait(s, "a marker")


def _one_launch_per_element(d, n: int):
  """n launches of the accumulate kernel, launch i adding 1 to element i of a host buffer (returned)."""
  from trainer.core.codegen.amd import render_accumulate, source
  from trainer.core.dtypes import dtypes
  from trainer.drivers.amd.compiler import compile_source
  r = render_accumulate(dtypes.int32, "sum", None)
  prog = d.load(compile_source(source([r]), d.gpu.target))[r.name]
  out, one = _host(d, bytes(4 * n)), _host(d, np.ones(1, np.int32).tobytes())
  for i in range(n): d.launch(prog, [out.va + 4 * i, one.va, 1, 256], (1, 1, 1), (256, 1, 1))
  d.signals.wait(d.mark_compute(), "the launches")
  return np.frombuffer(bytes(out.view(0, 4 * n)), np.int32)


@needs_clang
def test_d4_kernel_arguments_live_until_the_kernel_finishes(machine):
  """More launches than the ring has slots: a launch whose arguments were overwritten while it still
  ran adds to another element."""
  from trainer.drivers.amd.aql import RING_PACKETS
  machine(["gfx942"], seed=4)
  got = _one_launch_per_element(driver.process().device(0), RING_PACKETS * 3 + 17)
  assert (got == 1).all(), f"{(got != 1).sum()} of {len(got)} launches read another launch's arguments"


def test_d5_drain_waits_for_completion_not_for_read_pointers(machine):
  """The SDMA engine moves its read pointer when it fetches a copy and copies later: after drain()
  every copy queued before must have landed."""
  machine(["gfx942"], seed=5)
  p = driver.process()
  d = p.device(0)
  for i in range(20):
    data = np.random.default_rng(i).integers(0, 255, 1 << 16, dtype=np.uint8).tobytes()
    src, dst = _host(d, data), _host(d, bytes(1 << 16))
    d.copies.copy(dst.va, src.va, 1 << 16); d.copies.submit()
    p.drain()
    assert bytes(dst.view(0, 1 << 16)) == data, f"round {i}: drain() returned before the copy landed"
    p.memory.free(src); p.memory.free(dst)


def test_d6_an_interrupted_wait_is_restarted(machine):
  machine(["gfx942"], eintr_every=2)
  p = driver.process()
  d = p.device(0)
  for _ in range(4): p.signals.wait(d.mark_copies(), "a marker")


def test_d7_only_supported_gpus_are_used_and_own_the_shared_pages(machine, monkeypatch):
  sim = machine(["7900xtx-raphael"])
  p = driver.process()
  assert [g.target for g in p.gpus] == ["gfx1100"]
  assert not sim.gpus[0].vm and sim.gpus[1].vm                # no VM on the integrated gfx1036
  assert sim.event_page.gpu_id == sim.gpus[1].gpu_id
  p.signals.wait(p.device(0).mark_copies(), "a marker")
  monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "2,5")
  sim = machine(["mi300x"])
  assert [g.gpu_id for g in driver.process().gpus] == [sim.gpus[2].gpu_id, sim.gpus[5].gpu_id]


def test_d8_failures_leave_no_buffers_behind(machine):
  sim = machine(["gfx942", "gfx942"], unreachable=[(0, 1)])
  p = driver.process()
  bos, res = len(sim.bos), dict(sim.reservations)
  with pytest.raises(AmdError, match="MAP_MEMORY_TO_GPU"): p.memory.alloc(8192, p.gpus[0].gpu_id, kfd.MEM_VRAM, gpus=[g.gpu_id for g in p.gpus])
  assert (len(sim.bos), sim.reservations) == (bos, res)
  def refuse(a): raise OSError(errno.ENOSPC, "no queue slot")
  sim.handlers[kfd.CREATE_QUEUE] = refuse
  with pytest.raises(AmdError, match="CREATE_QUEUE"): p.device(0)
  assert (len(sim.bos), sim.reservations) == (bos, res)
  handles = sim.next_handle
  with pytest.raises(AmdError, match="CREATE_QUEUE"): p.device(0)   # the same error again, nothing allocated again
  assert sim.next_handle == handles


@needs_clang
def test_d9_code_objects_run_from_vram(machine):
  sim = machine(["gfx942"])
  x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
  np.testing.assert_allclose((Tensor(x, device="AMD:0") * 2).numpy(), x * 2)
  [code] = driver.process().device(0).code
  bo = sim.bo_at(code.va)
  assert bo.flags & kfd.MEM_VRAM and bo.flags & kfd.MEM_EXECUTABLE and not bo.cpu


def test_d10_runtime_enabled_after_every_vm(machine):
  sim = machine(["gfx942", "gfx1100"])
  driver.process()
  assert sim.runtime == 2


def test_d11_context_save_header_filled_as_libhsakmt_does(machine):
  sim = machine(["mi300x"])
  p = driver.process()
  d = p.device(0)
  [a] = [a for _, a in sim.queue_log if a.queue_type == kfd.QUEUE_COMPUTE_AQL]
  bo = sim.bo_at(a.ctx_save_restore_address)
  xcc, debug = 8, d.compute.sizes.debug
  for i in range(xcc):
    h = hsa.save_area_header_t.from_address(bo.alias + i * a.ctx_save_restore_size)
    assert (h.DebugOffset, h.DebugSize) == ((xcc - i) * a.ctx_save_restore_size, debug * xcc)
    assert h.ErrorEventId == p.signals.event_id and sim.gpus[0].table.lookup(h.ErrorReason) is not None


def test_d12_large_reduction_grids_fit_32_bits():
  from trainer.core.codegen import amd as cg
  from trainer.core.schedule import create_schedule, Kernel
  x = Tensor(np.arange(2048, dtype=np.float32)).reshape(1, 2048).expand(1 << 25, 2048)   # 2^25 outputs of 2048 terms
  t = (x * x).sum(1)
  [k] = [it for it in create_schedule([t.lazydata]) if isinstance(it, Kernel) and it.reduce is not None]
  r = cg.render(k, "gfx942")
  assert r.groups[0] * r.block < 1 << 32 and r.groups[0] <= cg.MAX_GROUPS


def test_d13_sdma6_copies_in_one_piece(machine):
  sim = machine(["gfx1100"])
  p = driver.process()
  d = p.device(0)
  src, dst = d.alloc(8 << 20, host=True), d.alloc(8 << 20)
  d.copies.copy(dst.va, src.va, 8 << 20)
  p.signals.wait(d.mark_copies(), "an 8 MiB copy")
  assert sim.stats["sdma_copies"] == 1


@needs_clang
def test_d13_a_full_compute_ring_wakes_on_an_interrupt_not_a_timeout(machine):
  sim = machine(["gfx942"], seed=13)
  assert (_one_launch_per_element(driver.process().device(0), 2500) == 1).all()
  assert sim.stats["wait_timeouts"] == 0
