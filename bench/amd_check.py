"""The AMD driver checked step by step on this machine's GPUs (or, with TRAINER_AMD_SIM set, on the
simulated ones, where the figures mean nothing): PASS or FAIL per step, then benchmark figures.

  python bench/amd_check.py [--quick]

Steps: open /dev/kfd, topology, memory (VRAM, host, peer mapping), queues, a kernel, SDMA copies,
a peer copy, and the collectives (every dtype, an odd size, the CPU devices' bits); bench/amd_check.sh
adds the op suites and a Llama step. Before the queues it prints what the driver will send to
CREATE_QUEUE (sizes from sysfs or the kernel's formula) and how to see KFD's reasons if it refuses.
Figures: SDMA host->device and peer copy GB/s, an elementwise kernel's GB/s, a float32 and a bfloat16
matmul's TFLOP/s (matrix cores), the ring all-reduce's bus GB/s.
"""
from __future__ import annotations
import os, sys, time, traceback
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np

results = []


def step(name):
  def wrap(fn):
    t = time.perf_counter()
    try:
      detail = fn() or ""
      results.append((name, True)); print(f"PASS {name:10s} {detail} ({time.perf_counter() - t:.1f} s)", flush=True)
    except Exception as e:
      results.append((name, False)); print(f"FAIL {name:10s} {type(e).__name__}: {e}", flush=True)
      traceback.print_exc(limit=3, file=sys.stdout)
    return fn
  return wrap


def main():
  quick = "--quick" in sys.argv
  from trainer.drivers.amd import device as driver, kfd
  state = {}

  @step("open")
  def _():
    p = state["p"] = driver.process()
    return f"KFD {p.version[0]}.{p.version[1]}" + (" (simulated: TRAINER_AMD_SIM)" if os.environ.get("TRAINER_AMD_SIM") else "")

  @step("topology")
  def _():
    gs = state["p"].gpus
    assert gs, "KFD lists no GPU"
    return "; ".join(f"{g.target} gpu_id {g.gpu_id}: {g.cu_count} CUs, wave {g.wave_size}, {g.vram_bytes / 2**30:.0f} GiB, "
                     f"GC {'.'.join(map(str, g.gc_version))}, SDMA {'.'.join(map(str, g.sdma_version))}" for g in gs)

  @step("memory")
  def _():
    p = state["p"]; g = p.gpus[0]
    v = p.memory.alloc(64 << 20, g.gpu_id, kfd.MEM_VRAM | kfd.MEM_WRITABLE)
    h = p.memory.alloc(1 << 20, g.gpu_id, kfd.MEM_GTT | kfd.MEM_WRITABLE | kfd.MEM_COHERENT | kfd.MEM_UNCACHED, cpu=True)
    h.view(0, 4)[:] = b"abcd"
    if len(p.gpus) > 1: p.memory.map(v, [x.gpu_id for x in p.gpus])
    p.memory.free(v); p.memory.free(h)
    return f"64 MiB VRAM, 1 MiB host memory{', peer-mapped on all GPUs' if len(p.gpus) > 1 else ''}"

  from trainer.drivers.amd.cwsr import queue_sizes
  from trainer.drivers.amd.queue_setup import DYNAMIC_DEBUG
  for g in state["p"].gpus if "p" in state else []:
    try:
      s = queue_sizes(g)
      print(f"CREATE_QUEUE gpu_id {g.gpu_id} ({g.target}, {g.xcc_count} XCC): ctl_stack_size {s.ctl_stack:#x}, ctx_save_restore_size "
            f"{s.per_xcc:#x} per XCC ({'from sysfs' if 'cwsr_size' in g.props else 'kernel formula'}), debugger area {s.debug:#x} per XCC, "
            f"save-area buffer {s.total:#x}, EOP {s.eop:#x}; ring 64 KiB, read/write pointers in one-page buffers")
    except kfd.AmdError as e: print(f"CREATE_QUEUE gpu_id {g.gpu_id}: {e}")
  print(f"If a queue fails with EINVAL, KFD logs why as a debug line: as root, {DYNAMIC_DEBUG}; run again; dmesg | grep kfd")

  @step("queues")
  def _():
    d = state["d0"] = state["p"].device(0)
    s = d.mark_compute(); d.signals.wait(s, "a compute marker")
    s = d.mark_copies(); d.signals.wait(s, "an SDMA marker")
    return "AQL and SDMA queues made, markers signalled"

  from trainer.core import Tensor
  @step("kernel")
  def _():
    x = np.random.default_rng(0).standard_normal(100_003).astype(np.float32)
    got = (Tensor(x, device="AMD:0") * 3 + 1).exp().numpy()
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64) * 3 + 1), rtol=1e-5)

  @step("SDMA")
  def _():
    x = np.random.default_rng(1).integers(0, 255, 9 << 20, dtype=np.uint8)    # more than one staging buffer
    np.testing.assert_array_equal(Tensor(x, device="AMD:0").numpy(), x)
    return "host -> device -> host, 9 MiB"

  n = len(state["p"].gpus) if "p" in state else 0
  if n > 1:
    @step("peer copy")
    def _():
      x = np.random.default_rng(2).standard_normal(1 << 20).astype(np.float32)
      np.testing.assert_array_equal(Tensor(x, device="AMD:0").to("AMD:1").numpy(), x)

    @step("collectives")
    def _():
      from trainer.parallel import all_reduce, all_gather, reduce_scatter
      for dt in ("float32", "bfloat16", "float16", "int32", "int8", "int64", "uint8", "bool"):
        r = np.random.default_rng(len(dt))
        xs = [r.random(100_003) < 0.3 if dt == "bool" else r.integers(0, 60, 100_003).astype(dt) if "int" in dt
              else r.standard_normal(100_003).astype(np.float32) for _ in range(n)]
        def run(devs):
          ts = [Tensor(x, device=d, dtype=dt) for x, d in zip(xs, devs)]
          return [o.numpy() for o in all_reduce(ts, "sum") + all_gather(reduce_scatter(ts, "max"))]
        for got, want in zip(run([f"AMD:{i}" for i in range(n)]), run([f"CPU:{i}" for i in range(n)])):
          np.testing.assert_array_equal(got, want, err_msg=dt)
      return f"all-reduce, reduce-scatter, all-gather over {n} GPUs: the CPU's bits for 8 dtypes, 100003 elements"
  else: print("SKIP peer copy, collectives: one GPU")

  print("== figures" + (" (simulated GPU: not hardware figures)" if os.environ.get("TRAINER_AMD_SIM") else ""))
  try: figures(n, quick)
  except Exception as e: print(f"figures failed: {type(e).__name__}: {e}")
  bad = [name for name, ok in results if not ok]
  print("ALL PASS" if not bad else f"FAILED: {', '.join(bad)}")
  return 1 if bad else 0


def figures(n: int, quick: bool):
  from trainer.core import Tensor, dtypes, jit
  from trainer.core.device import get_runtime
  rt = get_runtime("AMD:0")
  big = (16 if quick else 256) << 20
  def timed(fn, reps=3):
    fn(); rt.synchronize()
    t = time.perf_counter()
    for _ in range(reps): fn()
    rt.synchronize()
    return (time.perf_counter() - t) / reps
  a, b = rt.alloc(big), rt.alloc(big)
  print(f"SDMA device copy: {big / timed(lambda: rt.copy_peer(rt, b, a, big)) / 1e9:.1f} GB/s")
  x = np.ones(big // 4, np.float32)
  print(f"host -> device (staged): {big / timed(lambda: rt.copyin(a, x), 1) / 1e9:.1f} GB/s")
  if n > 1:
    r1 = get_runtime("AMD:1"); c = r1.alloc(big)
    print(f"peer copy AMD:0 -> AMD:1: {big / timed(lambda: rt.copy_peer(r1, c, a, big)) / 1e9:.1f} GB/s")
  t = Tensor(np.ones(big // 4, np.float32), device="AMD:0")
  f = jit(lambda u: u * 2 + 1)
  print(f"elementwise x*2+1 float32: {2 * big / timed(lambda: f(t)) / 1e9:.1f} GB/s")
  m = 1024 if quick else 8192
  for dt in ("float32", "bfloat16"):
    p, q = (Tensor(np.random.default_rng(i).standard_normal((m, m)).astype(np.float32), dtype=dt, device="AMD:0") for i in range(2))
    mm = jit(lambda u, v: u @ v)
    print(f"matmul {m}^3 {dt}: {2 * m**3 / timed(lambda: mm(p, q)) / 1e12:.2f} TFLOP/s")
  if n > 1:
    from trainer.parallel import all_reduce
    xs = [Tensor(np.ones(big // 2, np.float32), dtype=dtypes.bfloat16, device=f"AMD:{i}") for i in range(n)]
    ar = jit(lambda *ts: all_reduce(list(ts), "sum"))
    dt = timed(lambda: ar(*xs))
    print(f"ring all-reduce {big >> 20} MiB bf16 over {n} GPUs: {2 * (n - 1) / n * big / dt / 1e9:.1f} GB/s bus")


if __name__ == "__main__": sys.exit(main())
