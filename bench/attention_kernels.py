"""The fused attention kernels one by one: the Hopper (wgmma) and the mma.sync versions next to torch.

  python bench/attention_kernels.py [B H T D [HKV]]      (default 8 16 2048 128, HKV = H; causal bf16)
  python bench/attention_kernels.py 1 32 8192 128 8       (the 8B benchmark's own shape: 8 kv heads)

Launches the forward, delta and backward kernels straight (no graph, no casts), checks the outputs of each
version against torch's scaled_dot_product_attention on the same bf16 inputs (max|diff| / max|ref|), and
prints the median time of each kernel (CUDA events) and TFLOP/s: 4*B*H*T*T*D/2 flops for the causal
forward, 2.5x that for the backward. The mma.sync version is rendered as for an sm_80 device and built for
this one.
"""
from __future__ import annotations
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from trainer.core import dtypes
from trainer.core.device import Buffer, get_runtime
from trainer.core.dtypes import f32_to_bf16
from trainer.core.runtime.cuda import compile_cuda
from trainer.core.kernels.attention import AttentionForward, AttentionDelta, AttentionBackward
from gpu_core import time_ours as timed, time_torch as timed_torch   # bench/ is this script's folder

DEV = "CUDA:0"


def program(rt, kern, arch: str, nargs: int):
  r = kern.render_cuda(kern.name, arch)
  return rt.load(compile_cuda(r.src, r.arch or rt.arch), kern.name, r.grid, r.block, r.smem, nargs, r.zero_output, r.tmaps)


def main():
  b, h, t, d = (int(x) for x in sys.argv[1:5]) if len(sys.argv) >= 5 else (8, 16, 2048, 128)
  hkv = int(sys.argv[5]) if len(sys.argv) >= 6 else h
  import torch
  rt = get_runtime(DEV)
  args = (b, h, hkv, t, t, d, True, d ** -0.5, dtypes.bfloat16)
  rng = np.random.default_rng(0)
  words = [f32_to_bf16(rng.standard_normal((b, heads, t, d), dtype=np.float32)) for heads in (h, hkv, hkv, h)]
  bufs = []
  for w in words:
    x = Buffer(DEV, w.size, dtypes.bfloat16)
    rt.copyin(x.handle, w.reshape(-1))
    bufs.append(x)
  q, k, v, do = bufs
  tq, tk, tv, tdo = (torch.from_numpy(w.view(np.int16)).cuda().view(torch.bfloat16) for w in words)
  for x in (tq, tk, tv): x.requires_grad_(True)
  sdpa = lambda q, k, v, is_causal: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=hkv != h)
  ref_o = sdpa(tq, tk, tv, is_causal=True)
  ref = [ref_o.float()] + [g.float() for g in torch.autograd.grad(ref_o, (tq, tk, tv), tdo)]
  err = lambda mine, want: ((mine - want).abs().max() / want.abs().max()).item()
  flops = 4 * b * h * t * t * d / 2
  fwd_k, dl_k, bwd_k = AttentionForward(*args), AttentionDelta(*args), AttentionBackward(*args)
  n, nkv = b * h * t * d, b * hkv * t * d
  out, lse, delta = Buffer(DEV, n, dtypes.bfloat16), Buffer(DEV, b * h * t, dtypes.float32), Buffer(DEV, b * h * t, dtypes.float32)
  dq, dk, dv = Buffer(DEV, n, dtypes.float32), Buffer(DEV, nkv, dtypes.bfloat16), Buffer(DEV, nkv, dtypes.bfloat16)
  rows = []
  for label, arch in (("wgmma", rt.arch), ("mma.sync", "sm_80")):
    fwd, dl, bwd = program(rt, fwd_k, arch, 5), program(rt, dl_k, rt.arch, 3), program(rt, bwd_k, arch, 9)
    run_f = lambda: fwd(out.handle, lse.handle, q.handle, k.handle, v.handle)
    run_d = lambda: dl(delta.handle, do.handle, out.handle)
    run_b = lambda: bwd(dq.handle, dk.handle, dv.handle, q.handle, k.handle, v.handle, do.handle, lse.handle, delta.handle)
    run_f(); run_d(); run_b(); rt.synchronize()
    o = torch.from_numpy(out.numpy().view(np.int16)).cuda().view(torch.bfloat16).float().reshape(b, h, t, d)
    g = [torch.from_numpy(dq.numpy()).cuda()] + [torch.from_numpy(x.numpy().view(np.int16)).cuda().view(torch.bfloat16).float() for x in (dk, dv)]
    errs = [err(o, ref[0])] + [err(x.reshape(want.shape), want) for x, want in zip(g, ref[1:])]
    ms = [timed(rt, run_f), timed(rt, run_d), timed(rt, run_b)]
    rows.append((label, ms, errs))
  with torch.no_grad(): tf = timed_torch(torch, lambda: sdpa(tq, tk, tv, is_causal=True))
  def step():
    o = sdpa(tq, tk, tv, is_causal=True)
    return torch.autograd.grad(o, (tq, tk, tv), tdo)
  tfb = timed_torch(torch, step)
  print(f"\ncausal bf16 B={b} H={h} HKV={hkv} T={t} D={d}; torch {torch.__version__}")
  print(f"| {'version':9s} | fwd ms | fwd TF/s | delta ms | bwd ms | bwd TF/s | fwd+bwd TF/s | err out / dq / dk / dv")
  for label, (f, dd, bb), e in rows:
    print(f"| {label:9s} | {f:6.3f} | {flops / f / 1e9:8.1f} | {dd:8.3f} | {bb:6.3f} | {2.5 * flops / bb / 1e9:8.1f} | "
          f"{3.5 * flops / (f + dd + bb) / 1e9:12.1f} | {' / '.join(f'{x:.1e}' for x in e)}")
  print(f"| {'torch':9s} | {tf:6.3f} | {flops / tf / 1e9:8.1f} |          | {tfb - tf:6.3f} | {2.5 * flops / (tfb - tf) / 1e9:8.1f} | "
        f"{3.5 * flops / tfb / 1e9:12.1f} |")


if __name__ == "__main__":
  main()
