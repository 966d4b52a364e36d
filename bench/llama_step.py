"""The launcher's own training step for a recipe, timed, next to PyTorch at the same shape in the same call.

  python bench/llama_step.py [RECIPE] [--set key=value ...] [--steps N] [--torch PATH] [--eval N] [--profile]

It loads the recipe as launch.py does (default recipes/llama31_8b.yaml; `--set` overrides, typically
model.n_layers, mesh.* and the batch), generates C4 files in the real Megatron format (a Markov chain over
the recipe's vocabulary; the real C4 is not fetched), builds the run with trainer.loop.Run and trains it
with Run.train, the loop launch.py runs: the first steps run, record and replay the JIT, then `--steps`
steps are timed. It prints tokens/s, step time, model TFLOP/s and MFU, the peak memory of every device
(live buffers) against the memory plan (trainer/plan.py), the model's build time and the host's peak
RSS; `--eval N` also times an evaluation on N validation sequences; `--torch` runs
../shared/yardsticks/torch_reference.py llama (MODES=eager,amp) at the same shape in a subprocess after
ours has released the GPU. The last line is a one-line summary (BENCH ...) for scripts.
"""
from __future__ import annotations
import argparse, os, re, resource, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from trainer.config import load_config
from trainer.plan import plan_memory, with_capacity, GiB

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def make_data(cfg, folder: str, steps: int, eval_samples: int) -> str:
  from trainer.data.tiny_corpus import build_markov_c4
  m = cfg.model
  build_markov_c4(folder, vocab=m.vocab_size, seq_len=cfg.data.seq_len, train_samples=cfg.train.global_batch_size * (steps + 4),
                  validation_samples=eval_samples or cfg.eval.samples)
  return folder


def run_ours(a):
  overrides = list(a.set)
  cfg0 = load_config(a.recipe, overrides)
  data = make_data(cfg0, os.path.join(a.cache, f"c4_v{cfg0.model.vocab_size}_s{cfg0.data.seq_len}"), a.steps + 3, a.eval)
  overrides += [f"data.path={data}", f"checkpoint.dir={tempfile.mkdtemp()}", "checkpoint.every_steps=1000000000"]
  if a.eval: overrides += [f"eval.samples={a.eval}", "mlperf.division=open"]   # the closed division fixes 1024 sequences
  cfg = load_config(a.recipe, overrides)
  from trainer.loop import Run
  from trainer.peak import mesh_peak
  from trainer.build import flops_per_sample
  from trainer.core.device import get_runtime
  run = Run(cfg, os.path.join(tempfile.mkdtemp(), "bench.log"), None, progress=False)
  t0 = time.perf_counter(); run.init(); build = time.perf_counter() - t0
  devices = [run.mesh.device(d, t) for d in range(cfg.mesh.dp) for t in range(cfg.mesh.tp)]
  rts = [get_runtime(d) for d in devices]
  print(f"built {run.models[0].num_params() / 1e9:.3f}B parameters x {cfg.mesh.dp} replicas in {build:.1f}s; "
        f"host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
  t0 = time.perf_counter(); run.train(max_steps=3); warm = time.perf_counter() - t0   # run, record, first replay
  print(f"first 3 steps (compile, record, replay) {warm:.1f}s; kernels per step {run.step_fn.kernel_count}, "
        f"arena {run.step_fn.arena_bytes / GiB:.2f} GiB", flush=True)
  for rt in rts: rt.synchronize()
  t0 = time.perf_counter(); run.train(max_steps=3 + a.steps); dt = (time.perf_counter() - t0) / a.steps
  gb, T = cfg.train.global_batch_size, cfg.data.seq_len
  toks = gb * T / dt
  flops = flops_per_sample(cfg) * gb / dt
  peak_dev = mesh_peak(cfg.mesh.device, rts[0].device_name, len(devices), cfg.train.precision.compute_dtype) or 0
  out = dict(tokens_s=toks, step_s=dt, tflops=flops / 1e12, mfu=flops / peak_dev if peak_dev else 0, build_s=build, warm_s=warm,
             peaks=[rt.peak_in_use for rt in rts], device=rts[0].device_name or rts[0].name, cfg=cfg)
  if a.eval:
    t0 = time.perf_counter(); value = run.evaluate(); out["eval_s"] = time.perf_counter() - t0
    print(f"eval of {a.eval} sequences: log perplexity {value:.4f} in {out['eval_s']:.1f}s", flush=True)
    out["peaks"] = [rt.peak_in_use for rt in rts]
  if a.profile: profile(run.step_fn, rts[0])
  return out


def profile(step, rt, top=25):
  """Time every launch of one replay (needs TRAINER_CUDA_GRAPHS=0) and print where the step's time goes."""
  from trainer.core import realize as R
  if not hasattr(rt, "event") or len(step.replay) != len(step.launches):
    print("profile: needs a CUDA device and TRAINER_CUDA_GRAPHS=0"); return
  by = {}
  for prog, f in zip(step.launches, step.replay):
    s = rt.event(); f(); e = rt.event()
    key = prog[0] if isinstance(prog, tuple) else R.descriptions.get(id(prog), getattr(prog, "name", "?"))
    n, t = by.get(key, (0, 0.0))
    by[key] = (n + 1, t + rt.elapsed_ms(s, e))
  total = sum(t for _, t in by.values())
  print(f"profile: {total:.1f} ms in {len(step.launches)} launches; the largest:")
  for key, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]: print(f"{t:9.2f} ms {t / total:6.1%} x{n:<4d} {key}")


def run_torch(cfg, path):
  m = cfg.model
  env = dict(os.environ, MODES="eager,amp", DIM=str(m.dim), LAYERS=str(m.n_layers), HEADS=str(m.n_heads), KV=str(m.n_kv_heads),
             FFN=str(m.ffn_dim), VOCAB=str(m.vocab_size), SEQ=str(cfg.data.seq_len), BS=str(cfg.train.micro_batch_size))
  r = subprocess.run([sys.executable, path, "llama"], capture_output=True, text=True, env=env, timeout=900)
  got = {}
  for mode, key, v in re.findall(r"ANCHOR torch_llama\S*?_(eager|amp)_(tokens_per_s|model_TFLOPs|peak_GiB) (\S+)", r.stdout):
    got.setdefault(mode, {})[key] = float(v)
  if not got: print("torch yardstick failed:", r.stdout[-1500:], r.stderr[-1500:])
  return got


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("recipe", nargs="?", default=os.path.join(ROOT, "recipes", "llama31_8b.yaml"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--steps", type=int, default=5, help="timed steps after the 3 warm-up steps")
  p.add_argument("--eval", type=int, default=0, help="also time an evaluation on this many validation sequences")
  p.add_argument("--torch", help="path of torch_reference.py (the yardstick); omitted: ours only")
  p.add_argument("--profile", action="store_true", help="time each launch of one replay (set TRAINER_CUDA_GRAPHS=0)")
  p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "trainer_bench"), help="where the generated C4 files go")
  a = p.parse_args()
  ours = run_ours(a)
  cfg = ours["cfg"]
  plan = with_capacity(cfg, plan_memory(cfg))
  m, t, mesh = cfg.model, cfg.train, cfg.mesh
  print(f"\ndevice: {ours['device']} x{mesh.dp * mesh.tp} (dp {mesh.dp} x tp {mesh.tp}, zero1 {mesh.zero1}); Llama dim {m.dim}, {m.n_layers} layers, "
        f"batch {t.global_batch_size} x {cfg.data.seq_len} (micro {t.micro_batch_size} x {t.gradient_accumulation_steps}), recompute {t.recompute}, "
        f"compute {t.precision.compute_dtype}, master {t.precision.param_dtype}")
  peak = max(ours["peaks"])
  print(f"{'':26s}{'tokens/s':>12s}{'step s':>9s}{'TFLOP/s':>9s}{'MFU':>7s}{'peak GiB':>10s}")
  print(f"{'ours':26s}{ours['tokens_s']:12,.0f}{ours['step_s']:9.3f}{ours['tflops']:9.1f}{ours['mfu']:7.1%}{peak / GiB:10.2f}")
  print(f"plan: {plan.peak / GiB:.2f} GiB per device ({plan.phase}); measured / plan {peak / plan.peak:.3f}; per device "
        + " ".join(f"{p / GiB:.2f}" for p in ours["peaks"]))
  if a.torch:
    tt = run_torch(cfg, a.torch)
    for mode, r in tt.items():
      print(f"{'torch ' + mode + ' (1 GPU, micro-batch)':26s}{r.get('tokens_per_s', 0):12,.0f}{'':9s}{r.get('model_TFLOPs', 0):9.1f}{'':7s}{r.get('peak_GiB', 0):10.2f}")
    ratios = " ".join(f"{mode} {ours['tokens_s'] / (mesh.dp * mesh.tp) / r['tokens_per_s']:.2f}x" for mode, r in tt.items() if r.get("tokens_per_s"))
    if ratios: print(f"ours / torch per GPU: {ratios}")
  print(f"BENCH layers={m.n_layers} micro={t.micro_batch_size} accum={t.gradient_accumulation_steps} recompute={t.recompute} dp={mesh.dp} tp={mesh.tp} "
        f"tok_s={ours['tokens_s']:.0f} peak_gib={peak / GiB:.2f} plan_gib={plan.peak / GiB:.2f} build_s={ours['build_s']:.1f}"
        + (f" eval_s={ours['eval_s']:.1f}" if "eval_s" in ours else ""))


if __name__ == "__main__":
  main()
