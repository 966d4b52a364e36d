"""Golden check of what the driver sends to CREATE_QUEUE on every simulated machine: the compute
queue's ctl_stack_size, ctx_save_restore_size, EOP size and the size of each buffer must be what
the Linux kernel demands (drivers/gpu/drm/amd/amdkfd/kfd_queue.c, kfd_queue_ctx_save_restore_size and
kfd_queue_acquire_buffers), computed here from the node's sysfs properties by a transcription of that
formula independent of the driver's and of the simulator's. Machines of new kernels (which publish
cwsr_size and ctl_stack_size) and of old ones (which do not) alike."""
import pytest
from trainer.drivers.amd import kfd
from trainer.drivers.amd import device as driver
from trainer.drivers.amd.topology import parse_properties, TOPOLOGY

FIXTURES = ["mi300x", "mi300x-cpx", "mi350x", "7900xtx-raphael"]
SUPPORTED = {90402, 90500, 110000}


def page(x): return (x + 4095) // 4096 * 4096


def kernel_sizes(p: dict) -> dict:
  """kfd_queue.c, kfd_queue_ctx_save_restore_size (and kfd_get_vgpr_size_per_cu), from sysfs properties."""
  v = p["gfx_target_version"]
  cus = p["simd_count"] // p["simd_per_cu"] // p["num_xcc"]
  if v < 100100: waves = min(cus * 40, p["array_count"] // p["simd_arrays_per_engine"] * 512)   # gfx9: capped by the SEs
  else: waves = cus * 32
  vgpr = 0x80000 if v in (90402, 90010, 90008, 90500) else 0x60000 if v in (110000, 110001, 120000, 120001) else 0x40000
  lds = p["lds_size_in_kb"] * 1024 if v == 90500 else 0x10000          # only gfx950 counts its own LDS size
  wg_data = page(cus * (vgpr + 0x4000 + lds + 0x1000))                  # + SGPRs, LDS, hardware registers per CU
  ctl = page(40 + waves * (12 if v >= 100100 else 8) + 8)               # save-area header + control stack
  if v // 10000 == 10: ctl = min(ctl, 0x7000)
  return {"ctl_stack_size": ctl, "ctx_save_restore_size": ctl + wg_data, "debug": (waves * 32 + 63) // 64 * 64, "eop": 4096}


@pytest.mark.parametrize("old_kernel", [False, True], ids=["new-kernel", "old-kernel"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_create_queue_arguments_match_the_kernel_formula(machine, fixture, old_kernel):
  sim = machine([fixture], old_kernel=old_kernel)
  p = driver.process()
  nodes = {}
  for n in sim.listdir(TOPOLOGY):
    props = parse_properties(sim.read_text(f"{TOPOLOGY}/{n}/properties"))
    if props.get("gfx_target_version") in SUPPORTED: nodes[int(sim.read_text(f"{TOPOLOGY}/{n}/gpu_id"))] = props
    assert ("cwsr_size" in props) == (not old_kernel and "gfx_target_version" in props)
  for i in range(len(p.gpus)): p.device(i)
  assert sorted(g.gpu_id for g in p.gpus) == sorted(nodes)
  aql = {gid: a for gid, a in sim.queue_log if a.queue_type == kfd.QUEUE_COMPUTE_AQL}
  assert sorted(aql) == sorted(nodes)
  for gid, a in aql.items():
    want, xcc = kernel_sizes(nodes[gid]), nodes[gid]["num_xcc"]
    got = {"ctl_stack_size": a.ctl_stack_size, "ctx_save_restore_size": a.ctx_save_restore_size, "eop": a.eop_buffer_size}
    assert got == {k: want[k] for k in got}, (fixture, gid)
    assert sim.bo_at(a.ctx_save_restore_address).size == page((want["ctx_save_restore_size"] + want["debug"]) * xcc)
    assert sim.bo_at(a.eop_buffer_address).size == want["eop"]
    assert sim.bo_at(a.ring_base_address).size == a.ring_size
    for ptr in (a.read_pointer_address, a.write_pointer_address): assert sim.bo_at(ptr).size == 4096
  for gid, a in sim.queue_log:
    if a.queue_type == kfd.QUEUE_SDMA:
      assert sim.bo_at(a.ring_base_address).size == a.ring_size
      for ptr in (a.read_pointer_address, a.write_pointer_address): assert sim.bo_at(ptr).size == 4096
