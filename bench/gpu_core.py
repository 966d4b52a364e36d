"""GPU core benchmark: our CUDA kernels next to PyTorch measured in the same run.

  python bench/gpu_core.py [--quick] [--attention-only]

Prints the device, then a table: bf16 matmul 4096^3 and 8192^3 in TFLOP/s (ours vs torch.matmul),
and a fused elementwise chain over 256M bf16 elements in GB/s (bytes read + written) next to torch's
device-to-device copy rate, then causal bf16 attention forward and forward+backward in TFLOP/s next to
torch's scaled_dot_product_attention (see attention_rows). Each figure is the median of timed repeats
(CUDA events) after warm-ups. --attention-only prints the attention rows alone.
PyTorch is imported here only, as the yardstick.
"""
from __future__ import annotations
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from trainer.core import Tensor, dtypes
from trainer.core.device import get_runtime
from trainer.core.schedule import create_schedule, Kernel
from trainer.core import realize as R
from trainer.core.dtypes import f32_to_bf16, bf16_to_f32

DEV = "CUDA:0"


def time_ours(rt, fn, warm=3, reps=10) -> float:
  """Median milliseconds of fn() (queued launches) measured with events on the device's stream."""
  for _ in range(warm): fn()
  rt.synchronize()
  ts = []
  for _ in range(reps):
    s = rt.event(); fn(); e = rt.event()
    ts.append(rt.elapsed_ms(s, e))
  return float(np.median(ts))


def time_torch(torch, fn, warm=3, reps=10) -> float:
  for _ in range(warm): fn()
  torch.cuda.synchronize()
  ts = []
  for _ in range(reps):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); e.synchronize()
    ts.append(s.elapsed_time(e))
  return float(np.median(ts))


def bound(t: Tensor):
  """The single kernel that realizes `t` (its inputs already on the device), as a zero-argument launch."""
  items = create_schedule([t.lazydata])
  ks = [it for it in items if isinstance(it, Kernel)]
  assert len(items) == 1 and len(ks) == 1, f"expected one kernel, got {items}"
  k = ks[0]
  from trainer.core.device import Buffer
  out = Buffer(k.output.device, k.output.size, k.output.dtype)
  prog = R.get_program(k)
  return prog.bind(out.handle, *[b.buffer.handle for b in k.inputs]), out, prog


def attention_rows(rt, torch, quick: bool) -> list:
  """Causal bf16 attention, B=8 H=16 T=2048 D=128 (--quick: B=2 T=1024): our fused kernels (through
  scaled_dot_product_attention, under @jit) next to torch's scaled_dot_product_attention(is_causal=True),
  forward alone and forward + backward. TFLOP/s count 4*B*H*T*T*D/2 flops for the causal forward and
  2.5x that for the backward. The note gives our peak device memory growth for fwd+bwd and the error
  of our output and dq against torch's."""
  from trainer.core import jit
  b, h, t, d = (2, 16, 1024, 128) if quick else (8, 16, 2048, 128)
  rng = np.random.default_rng(1)
  raw = [f32_to_bf16(rng.standard_normal((b, h, t, d), dtype=np.float32)) for _ in range(4)]
  q, k, v = (Tensor(bf16_to_f32(a), dtype="bfloat16", device=DEV, requires_grad=True) for a in raw[:3])
  g = Tensor(bf16_to_f32(raw[3]), dtype="bfloat16", device=DEV)
  qd, kd, vd = (Tensor(x.lazydata) for x in (q, k, v))

  @jit
  def fwd(): return qd.scaled_dot_product_attention(kd, vd, is_causal=True)

  @jit
  def fwd_bwd():
    q.grad = k.grad = v.grad = None
    out = q.scaled_dot_product_attention(k, v, is_causal=True)
    out.backward(g)
    return out, q.grad, k.grad, v.grad

  flops = 4 * b * h * t * t * d / 2
  held = rt.held
  ms_f, ms_fb = time_ours(rt, fwd), time_ours(rt, fwd_bwd)
  grow = (rt.peak - held) / 2**30
  ours = [flops / ms_f / 1e9, 3.5 * flops / ms_fb / 1e9]
  refs, note = [None, None], f"peak +{grow:.2f} GiB"
  if torch is not None:
    tq, tk, tv, tg = (torch.from_numpy(a.view(np.int16)).cuda().view(torch.bfloat16) for a in raw)
    for x in (tq, tk, tv): x.requires_grad_(True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    def tstep():
      o = sdpa(tq, tk, tv, is_causal=True)
      return (o,) + torch.autograd.grad(o, (tq, tk, tv), tg)
    with torch.no_grad(): tms_f = time_torch(torch, lambda: sdpa(tq, tk, tv, is_causal=True))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tms_fb = time_torch(torch, tstep)
    tgrow = (torch.cuda.max_memory_allocated() - base) / 2**30
    refs = [flops / tms_f / 1e9, 3.5 * flops / tms_fb / 1e9]
    theirs = tstep()
    mine = [torch.from_numpy(x.numpy()).cuda() for x in fwd_bwd()[:2]]
    errs = [((m - th.float()).abs().max() / th.float().abs().max()).item() for m, th in zip(mine, theirs[:2])]
    note += f" (torch +{tgrow:.2f}); out err {errs[0]:.1e}, dq err {errs[1]:.1e}"
  shape = f"B={b} H={h} T={t} D={d}"
  return [(f"attention fwd {shape}", "TFLOP/s", ours[0], refs[0], "torch sdpa", "causal bf16"),
          (f"attention fwd+bwd {shape}", "TFLOP/s", ours[1], refs[1], "torch sdpa", note)]


def main():
  quick = "--quick" in sys.argv
  rt = get_runtime(DEV)
  try:
    import torch
    has_torch = torch.cuda.is_available()
  except Exception:
    torch, has_torch = None, False
  print(f"device: {rt.device_name} ({rt.arch}, {rt.sm_count} SMs); torch: {torch.__version__ if torch else 'absent'}")
  rows = []
  rng = np.random.default_rng(0)
  attention_only = "--attention-only" in sys.argv
  for n in [] if attention_only else [1024, 4096] if quick else [4096, 8192]:
    a_np = f32_to_bf16(rng.standard_normal((n, n), dtype=np.float32))
    b_np = f32_to_bf16(rng.standard_normal((n, n), dtype=np.float32))
    a = Tensor(bf16_to_f32(a_np), dtype="bfloat16", device=DEV)
    b = Tensor(bf16_to_f32(b_np), dtype="bfloat16", device=DEV)
    fn, out, prog = bound(a @ b)
    ms = time_ours(rt, fn)
    flops = 2 * n ** 3
    ours = flops / ms / 1e9
    ref, err = None, ""
    if has_torch:
      ta = torch.from_numpy(a_np.view(np.int16)).cuda().view(torch.bfloat16)
      tb = torch.from_numpy(b_np.view(np.int16)).cuda().view(torch.bfloat16)
      tms = time_torch(torch, lambda: ta @ tb)
      ref = flops / tms / 1e9
      # correctness of ours against torch on the same data
      mine = torch.from_numpy(out.numpy().view(np.int16).reshape(n, n)).cuda().view(torch.bfloat16).float()
      theirs = (ta @ tb).float()
      err = f"max|diff|/max|ref| {((mine - theirs).abs().max() / theirs.abs().max()).item():.1e}"
      del ta, tb, mine, theirs
    rows.append((f"bf16 matmul {n}^3", "TFLOP/s", ours, ref, "torch.matmul", err))
    del a, b, out
  if not attention_only:
    # fused elementwise chain over 256M bf16: one kernel reading x and writing y
    n = (16 if quick else 256) << 20
    base = f32_to_bf16(rng.standard_normal(1 << 20, dtype=np.float32))
    x = Tensor(bf16_to_f32(np.tile(base, n >> 20)), dtype="bfloat16", device=DEV)
    fn, out, prog = bound(((x * 1.5 + 0.25).maximum(x * 0.1) * x.sigmoid()).cast(dtypes.bfloat16))
    ms = time_ours(rt, fn)
    ours = 2 * n * 2 / ms / 1e6
    ref = None
    if has_torch:
      tx = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
      ty = torch.empty_like(tx)
      tms = time_torch(torch, lambda: ty.copy_(tx))
      ref = 2 * n * 2 / tms / 1e6
      del tx, ty
    rows.append((f"fused elementwise {n >> 20}M bf16", "GB/s", ours, ref, "torch d2d copy", f"grid {prog.grid[0]}x{prog.block[0]}"))
  rows += attention_rows(rt, torch if has_torch else None, quick)
  print(f"\n| {'benchmark':30s} | {'unit':7s} | {'ours':>8s} | {'torch':>8s} | {'ratio':>6s} | {'yardstick':15s} | note")
  print(f"|{'-' * 32}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 17}|------")
  for name, unit, ours, ref, yard, note in rows:
    r = f"{ours / ref:6.2f}" if ref else "     -"
    print(f"| {name:30s} | {unit:7s} | {ours:8.1f} | {ref if ref else float('nan'):8.1f} | {r} | {yard:15s} | {note}")


if __name__ == "__main__":
  main()
