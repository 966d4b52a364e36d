"""Collectives benchmark on two (or more) GPUs: our ring all-reduce over peer copies, next to NCCL
through torch.distributed measured in the same run (the yardstick script), and peer copy bandwidth.

  python bench/collectives.py [path/to/torch_reference.py]

Bus bandwidth = 2 (n-1)/n * bytes / time, as NCCL reports it. Our all-reduce (parallel/ring.py) is
replayed by the JIT (no graph building in the timed loop; the ring engine issues its copies and adds).
PyTorch is used only by the yardstick subprocess.
"""
from __future__ import annotations
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from trainer.core import Tensor, dtypes, jit
from trainer.core.device import get_runtime, Buffer
from trainer.core.runtime.cuda import physical_device_count
from trainer.parallel import all_reduce, ring


def sync(devs):
  for d in devs: get_runtime(d).synchronize()


def bench_all_reduce(devs, nbytes, reps=5):
  n = nbytes // 2
  rng = np.random.default_rng(0)
  xs = [Tensor(rng.standard_normal(n, dtype=np.float32), device=d, dtype=dtypes.bfloat16) for d in devs]
  step = jit(lambda *ts: all_reduce(list(ts), "sum"))
  for _ in range(3): out = step(*xs)
  if nbytes <= 1 << 24:   # check the result once
    ref = sum(x.numpy().astype(np.float64) for x in xs)
    assert np.allclose(out[-1].numpy(), ref, rtol=2e-2, atol=5e-2), "all-reduce result differs from the numpy sum"
  sync(devs)
  t = time.perf_counter()
  for _ in range(reps): step(*xs)
  sync(devs)
  dt = (time.perf_counter() - t) / reps
  k = len(devs)
  return 2 * (k - 1) / k * nbytes / dt / 1e9


def bench_peer(src, dst, nbytes=1 << 30, reps=10):
  a, b = Buffer(src, nbytes, dtypes.uint8), Buffer(dst, nbytes, dtypes.uint8)
  for _ in range(2): b.copy_from_peer(a)
  sync([src, dst])
  t = time.perf_counter()
  for _ in range(reps): b.copy_from_peer(a)
  sync([src, dst])
  return nbytes * reps / (time.perf_counter() - t) / 1e9


def main():
  n = physical_device_count()
  if n < 2: print(f"needs 2 CUDA devices, found {n} (virtual devices of TRAINER_CUDA_DEVICES share a GPU: no bandwidth to measure)"); return
  devs = [f"CUDA:{i}" for i in range(n)]
  yard = sys.argv[1] if len(sys.argv) > 1 else None
  anchors = {}
  if yard and os.path.exists(yard):
    r = subprocess.run([sys.executable, yard, "p2p", "nccl"], capture_output=True, text=True, timeout=400)
    for line in r.stdout.splitlines():
      if line.startswith("ANCHOR"): _, name, val, unit = line.split(None, 3); anchors[name] = float(val)
    if not anchors: print(r.stdout[-2000:], r.stderr[-2000:])
  rows = []
  for size in (1 << 24, 1 << 27, 1 << 30):
    ours = bench_all_reduce(devs, size)
    theirs = anchors.get(f"nccl_allreduce_busbw_{n}gpu_{size >> 20}MiB")
    per = len(ring.pieces(0, size // 2 // n, 2))
    rows.append((f"all-reduce bf16 {size >> 20} MiB ({per} pieces/chunk)", ours, theirs))
  rows.append(("peer copy 1 GiB CUDA:0 -> CUDA:1", bench_peer(devs[0], devs[1]), anchors.get("p2p_0to1_1024MiB")))
  print(f"devices: {n} x {get_runtime(devs[0]).name}")
  print(f"{'case':46s} {'ours GB/s':>10s} {'NCCL/torch':>11s} {'ratio':>6s}")
  for name, ours, theirs in rows:
    print(f"{name:46s} {ours:10.1f} {theirs if theirs else float('nan'):11.1f} {ours / theirs if theirs else float('nan'):6.2f}")


if __name__ == "__main__":
  main()
