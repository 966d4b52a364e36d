"""bf16 matmul on a GPU in every operand layout: checks, then timings next to torch.matmul.

  python bench/gpu_matmul.py [--quick]

Layouts: A contiguous along K ('k') or along M ('m'), B along K ('k') or along N ('n'); 'kn' is a @ b of
two row-major matrices. Checks odd sizes against float64 on the host (relative Frobenius error) and 4096^3
against torch, printing the kernel's target (sm_90a: the wgmma path). Then the median TFLOP/s of each
layout at 4096^3 and 8192^3 (CUDA events, as bench/gpu_core.py) next to torch on the same data.
"""
from __future__ import annotations
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from trainer.core import Tensor
from trainer.core.device import get_runtime
from trainer.core.codegen import cuda as cg
from trainer.core.dtypes import f32_to_bf16, bf16_to_f32
from gpu_core import bound, time_ours, time_torch, DEV

LAYOUTS = ("kn", "kk", "mn", "mk")


def operands(a: np.ndarray, b: np.ndarray, layout: str):
  """Device tensors equal to a (M x K) and b (K x N), stored in the given layout."""
  def put(x, transposed):
    if not transposed: return Tensor(x, dtype="bfloat16", device=DEV).realize()
    return Tensor(np.ascontiguousarray(x.T), dtype="bfloat16", device=DEV).realize().transpose(0, 1)
  return put(a, layout[0] == "m"), put(b, layout[1] == "k")


def target(x: Tensor, y: Tensor) -> str:
  from trainer.core.schedule import create_schedule, Kernel
  (k,) = [it for it in create_schedule([(x @ y).lazydata]) if isinstance(it, Kernel)]
  return cg.render(k, "k", get_runtime(DEV).arch).arch or "sm_90"


def rnd(*shape, seed=0): return bf16_to_f32(f32_to_bf16(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)))


def check(torch) -> bool:
  ok = True
  for M, N, K in [(300, 264, 520), (136, 200, 264), (136, 100, 72), (129, 96, 72), (1, 256, 64), (1000, 1000, 1000), (64, 8, 8)]:
    a, b = rnd(M, K, seed=M), rnd(K, N, seed=N)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for lay in LAYOUTS:
      x, y = operands(a, b, lay)
      got = (x @ y).numpy().astype(np.float64)
      err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
      ok &= bool(err < 8e-3)
      print(f"check {M}x{N}x{K} {lay}: {target(x, y)} rel err {err:.1e} {'ok' if err < 8e-3 else 'FAIL'}")
  if torch is not None:
    n = 4096
    a, b = rnd(n, n, seed=1), rnd(n, n, seed=2)
    ta, tb = torch.from_numpy(a).cuda().bfloat16(), torch.from_numpy(b).cuda().bfloat16()
    ref = (ta @ tb).double()
    for lay in LAYOUTS:
      x, y = operands(a, b, lay)
      got = torch.from_numpy((x @ y).numpy().astype(np.float32)).cuda().double()
      err = ((got - ref).norm() / ref.norm()).item()
      ok &= err < 8e-3
      print(f"check {n}^3 {lay} vs torch: rel err {err:.1e} {'ok' if err < 8e-3 else 'FAIL'}")
  return ok


def timings(torch, sizes):
  rt = get_runtime(DEV)
  rows = []
  for n in sizes:
    a, b = rnd(n, n, seed=3), rnd(n, n, seed=4)
    ref = None
    if torch is not None:
      ta, tb = torch.from_numpy(a).cuda().bfloat16(), torch.from_numpy(b).cuda().bfloat16()
      ref = 2 * n ** 3 / time_torch(torch, lambda: ta @ tb) / 1e9
      del ta, tb
    for lay in LAYOUTS:
      x, y = operands(a, b, lay)
      fn, out, prog = bound(x @ y)
      tf = 2 * n ** 3 / time_ours(rt, fn) / 1e9
      rows.append((n, lay, tf, ref, prog.grid[0]))
      del x, y, out
  print(f"\n| size | layout | ours TFLOP/s | torch TFLOP/s | ratio | grid")
  for n, lay, tf, ref, grid in rows:
    print(f"| {n}^3 | {lay} | {tf:7.1f} | {ref or float('nan'):7.1f} | {tf / ref if ref else float('nan'):5.2f} | {grid}")


def main():
  try:
    import torch
    torch = torch if torch.cuda.is_available() else None
  except ImportError:
    torch = None
  rt = get_runtime(DEV)
  print(f"device: {rt.device_name} ({rt.arch}, {rt.sm_count} SMs)")
  ok = check(torch)
  timings(torch, [1024, 2048] if "--quick" in sys.argv else [4096, 8192])
  print("checks:", "all ok" if ok else "FAILURES")


if __name__ == "__main__":
  main()
