"""One training step of a Llama-shaped model on GPUs, next to PyTorch eager on the same GPU.

  python bench/gpu_llama.py [--torch .yard/torch_reference.py] [--dp N] [--layers L] [--batch B] [--seq T] ...

Default shape (issue 3): dim 2048, 16 layers, 16 heads, 8 kv heads, ffn 8192, vocab 128256, batch 8 x
seq 2048, bf16 parameters, AdamW (ours keeps fp32 master weights and moments, as the trainer does;
torch's yardstick steps bf16 parameters with its fused AdamW). `--dp N` splits the batch over N replicas
with trainer.parallel.DataParallel (each gets --batch / N sequences); `--tp N` shards each replica over
N GPUs (Megatron tensor parallelism, trainer.parallel.tensor_parallel). The step is the trainer's:
forward, cross entropy in float32, backward, optimizer, all under @jit (replayed as CUDA graphs).

Prints tokens/s, step time, model TFLOP/s (6 x non-embedding params + 12 x layers x dim x seq per
token, the yardstick's count), peak device memory held by our allocator, and the yardstick's figures
from torch_reference.py run in a subprocess after ours has released the GPU.
"""
from __future__ import annotations
import argparse, os, re, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
from trainer.core import Tensor, jit
from trainer.core.device import get_runtime
from trainer.models.llama import Llama, LlamaConfig
from trainer.nn.optim import AdamW
from trainer.parallel.data_parallel import DataParallel
from trainer.parallel.mesh import Mesh
from trainer.parallel.sharded import Sharded
from trainer.parallel.tensor_parallel import shard_model, LLAMA_PLAN


def build(a, mesh: Mesh):
  cfg = LlamaConfig(dim=a.dim, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads, ffn_dim=a.ffn, vocab_size=a.vocab,
                    max_seq_len=a.seq, dtype="bfloat16")
  Tensor.manual_seed(0)
  models = [Llama(cfg, device=mesh.device(d)) for d in range(mesh.dp)]
  if mesh.tp > 1: models = [shard_model(m, mesh.tp_group(d), LLAMA_PLAN) for d, m in enumerate(models)]
  dp = DataParallel(models, lambda ps: AdamW(ps, lr=1e-4, weight_decay=0.1))
  devices = mesh.dp_group(0)

  @jit
  def step(xs, ys):
    losses = []
    for m, x, y in zip(models, xs, ys):
      li = m.loss(x, y)
      li.backward()
      losses.append(li.to(devices[0]))
    dp.step()
    return sum(losses) * (1.0 / len(models))
  return cfg, models, step


def run_ours(a):
  mesh = Mesh(a.dp, a.tp, a.backend)
  devices = [mesh.device(d, t) for d in range(a.dp) for t in range(a.tp)]
  t0 = time.time()
  cfg, models, step = build(a, mesh)
  nparams = models[0].num_params()
  print(f"model: {nparams / 1e9:.3f}B params, built in {time.time() - t0:.1f}s on {', '.join(devices)}", flush=True)
  rng = np.random.default_rng(0)
  per = a.batch // a.dp
  def place(arr, d):
    t = Tensor(arr, device=mesh.device(d))
    return Sharded.replicate(t, mesh.tp_group(d)) if a.tp > 1 else t
  def batch():
    tok = rng.integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
    return [place(tok[i * per:(i + 1) * per, :-1], i) for i in range(a.dp)], [place(tok[i * per:(i + 1) * per, 1:], i) for i in range(a.dp)]
  rts = [get_runtime(d) for d in devices]
  losses = []
  for i in range(3):   # run, record, first replay
    t0 = time.time()
    losses.append(step(*batch()).item())
    print(f"call {i + 1}: {time.time() - t0:.1f}s loss {losses[-1]:.4f}", flush=True)
  data = [batch() for _ in range(a.iters)]
  for rt in rts: rt.synchronize()
  t0 = time.perf_counter()
  for xs, ys in data: out = step(xs, ys)
  losses.append(out.item())
  dt = (time.perf_counter() - t0) / a.iters
  toks = a.batch * a.seq / dt
  flops_tok = 6 * (nparams - a.vocab * a.dim) + 12 * a.layers * a.dim * a.seq
  peak = max(getattr(rt, 'peak', 0) for rt in rts) / 2**30
  print(f"losses: {' '.join(f'{l:.3f}' for l in losses)}")
  if a.profile: profile(step, rts[0])
  print(f"kernels per step {step.kernel_count}, arena {step.arena_bytes / 2**30:.1f} GiB for {step.intermediate_bytes / 2**30:.1f} GiB of intermediates")
  return dict(tokens_s=toks, step_ms=dt * 1e3, tflops=toks * flops_tok / 1e12, peak_gib=peak, nparams=nparams, device=getattr(rts[0], 'device_name', rts[0].name))


def profile(step, rt, top=25):
  """Time every launch of one replay (needs TRAINER_CUDA_GRAPHS=0) and print where the step's time goes."""
  from trainer.core import realize as R
  if not hasattr(rt, "event"): print("profile: needs a CUDA device"); return
  if len(step.replay) != len(step.launches): print("profile: set TRAINER_CUDA_GRAPHS=0 to time launches one by one"); return
  by = {}
  for prog, f in zip(step.launches, step.replay):
    s = rt.event(); f(); e = rt.event()
    key = "copy" if isinstance(prog, tuple) else R.descriptions.get(id(prog), getattr(prog, "name", "?"))
    n, t = by.get(key, (0, 0.0))
    by[key] = (n + 1, t + rt.elapsed_ms(s, e))
  total = sum(t for _, t in by.values())
  print(f"profile: {total:.1f} ms in {len(step.launches)} launches; the largest:")
  for key, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]: print(f"{t:9.2f} ms {t / total:6.1%} x{n:<4d} {key}")


def run_torch(a, path):
  env = dict(os.environ, MODES="eager", DIM=str(a.dim), LAYERS=str(a.layers), HEADS=str(a.heads), KV=str(a.kv_heads), FFN=str(a.ffn),
             VOCAB=str(a.vocab), SEQ=str(a.seq), BS=str(a.batch // a.dp))
  r = subprocess.run([sys.executable, path, "llama"], capture_output=True, text=True, env=env, timeout=900)
  got = dict(re.findall(r"ANCHOR torch_llama\S*_eager_(tokens_per_s|model_TFLOPs) (\S+)", r.stdout))
  if "tokens_per_s" not in got: print("torch yardstick failed:", r.stdout[-1500:], r.stderr[-1500:])
  return {k: float(v) for k, v in got.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("dim", 2048), ("layers", 16), ("heads", 16), ("kv-heads", 8), ("ffn", 8192), ("vocab", 128256), ("batch", 8),
                        ("seq", 2048), ("dp", 1), ("tp", 1), ("iters", 5)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--profile", action="store_true", help="time each kernel of one replay (run with TRAINER_CUDA_GRAPHS=0)")
  p.add_argument("--backend", default="CUDA", help="CUDA, or CPU to try the script on a small shape")
  p.add_argument("--torch", help="path of torch_reference.py (the yardstick); omitted: ours only")
  a = p.parse_args()
  if a.batch % a.dp: p.error(f"--batch {a.batch} is not divisible by --dp {a.dp}")
  ours = run_ours(a)
  print(f"\ndevice: {ours['device']} x{a.dp * a.tp} (dp {a.dp} x tp {a.tp}); Llama {ours['nparams'] / 1e9:.2f}B, batch {a.batch} x seq {a.seq}, bf16, AdamW")
  print(f"{'':24s}{'tokens/s':>12s}{'step ms':>10s}{'TFLOP/s':>10s}{'peak GiB':>10s}")
  print(f"{'ours':24s}{ours['tokens_s']:12,.0f}{ours['step_ms']:10.1f}{ours['tflops']:10.1f}{ours['peak_gib']:10.1f}")
  if a.torch:
    t = run_torch(a, a.torch)
    if t:
      print(f"{'torch eager (1 GPU, ' + str(a.batch // a.dp) + ' seq)':24s}{t['tokens_per_s']:12,.0f}{'':10s}{t['model_TFLOPs']:10.1f}")
      print(f"ratio ours / torch{' (per GPU)' if a.dp * a.tp > 1 else ''}: {ours['tokens_s'] / (a.dp * a.tp) / t['tokens_per_s']:.2f}x")


if __name__ == "__main__":
  main()
