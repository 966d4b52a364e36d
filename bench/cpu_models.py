"""The CPU recipes' training step, ours next to PyTorch's on the same CPU in the same run.

  python bench/cpu_models.py [--torch PYTHON] [--steps 20] [--rounds 1] [--profile] [llama resnet]

Each recipe (recipes/llama_tiny.yaml, recipes/resnet_tiny.yaml) is built with trainer.loop.Run and trained by
Run.train, the loop launch.py runs, float32 at the recipe's own shapes: 3 steps (compile, record, first replay),
then `--steps` timed ones. Printed per recipe: the median time of the jitted step (forward, backward, optimizer,
what torch's step also does), the median of the loop's whole step (with the batch's preparation and logging), the
kernels per step, and the peak of live buffers (the first, unjitted step's and a replay's). `--torch` names a Python
that has torch (default /work/venv-torch/bin/python when it exists); it runs `--yardstick` (default
../shared/yardsticks/torch_cpu.py) for
torch eager and torch.compile at the same shapes right after ours, and the ratio torch time / our time is printed
(> 1: we are faster). Without torch only our figures are printed. `--rounds N` alternates ours and torch N times
(the machine is shared: say how far the rounds disagree). `--profile` times each kernel of one replay by kind.

The yardstick's tiny ResNet has an 8-wide stem and expansion 4, so this runs resnet_tiny with
model.stem_width=8 and model.expansion=4 (the recipe's defaults are widths[0] and 2).
"""
from __future__ import annotations
import argparse, gc, os, re, subprocess, sys, tempfile, time
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cpu_core import cpu_name

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
YARDSTICK = os.path.join(ROOT, "..", "shared", "yardsticks", "torch_cpu.py")
TORCH_PYTHON = "/work/venv-torch/bin/python"
RECIPES = {"llama": ("llama_tiny.yaml", []), "resnet": ("resnet_tiny.yaml", ["model.stem_width=8", "model.expansion=4"])}


class Timed:
  """The loop's jitted step, timed call by call (a CPU replay is finished when the call returns)."""
  def __init__(self, fn): self.fn, self.times = fn, []
  def __getattr__(self, name): return getattr(self.fn, name)
  def __call__(self, *args):
    t = time.perf_counter(); out = self.fn(*args); self.times.append(time.perf_counter() - t)
    return out


def run_ours(model: str, steps: int, profile: bool) -> dict:
  from trainer.config import load_config
  from trainer.loop import Run
  from trainer.core.device import get_runtime
  recipe, sets = RECIPES[model]
  gc.collect()
  rt = get_runtime("CPU:0")
  base, rt.peak_in_use = rt.in_use, rt.in_use   # what an earlier recipe of this process still holds
  cfg = load_config(os.path.join(ROOT, "recipes", recipe), sets + [f"checkpoint.dir={tempfile.mkdtemp()}", "checkpoint.every_steps=1000000"])
  run = Run(cfg, os.path.join(tempfile.mkdtemp(), "bench.log"), None, progress=False)
  run.init()
  run.train(max_steps=3)   # run, record, first replay
  first_peak, rt.peak_in_use = rt.peak_in_use - base, rt.in_use
  run.step_fn = Timed(run.step_fn)
  loop = []
  for _ in range(steps):
    t = time.perf_counter(); run.train(max_steps=run.step + 1); loop.append(time.perf_counter() - t)
  out = dict(step=float(np.median(run.step_fn.times)), loop=float(np.median(loop)), kernels=run.step_fn.kernel_count,
             first_peak=first_peak, replay_peak=rt.peak_in_use - base, batch=cfg.train.global_batch_size, unit="tok" if model == "llama" else "img",
             per_sample=cfg.data.seq_len if model == "llama" else 1)
  if profile: out["profile"] = profile_replay(run.step_fn.fn)
  return out


def kind(desc: str) -> str:
  """The profile's kinds: matrix products and convolutions (contractions), fused attention, the optimizer's kernels,
  elementwise kernels, reductions, embedding rows."""
  if desc.startswith("custom AdamW") or " in place" in desc: return "optimizer"
  if desc.startswith("custom Attention"): return "attention"
  if desc.startswith("custom"): return "embedding rows"
  if desc.startswith("product"): return "convolution" if len(re.search(r"\((.*?)\)", desc).group(1).split(",")) >= 7 else "matmul"
  return desc.split()[0]


def profile_replay(step, reps: int = 5, top: int = 15) -> dict:
  """Each launch of the replay timed alone (`reps` replays): per kernel and per kind; the replay's own cost is
  a whole replay's time less the sum of its kernels'."""
  from trainer.core import realize as R
  by = {}
  for _ in range(reps):
    for prog, f in zip(step.launches, step.replay):
      t = time.perf_counter(); f(); dt = time.perf_counter() - t
      key = prog[0] if isinstance(prog, tuple) else R.descriptions.get(id(prog), getattr(prog, "name", "?"))
      n, s = by.get(key, (0, 0.0)); by[key] = (n + 1, s + dt)
  whole = []
  for _ in range(reps):
    t = time.perf_counter()
    for f in step.replay: f()
    whole.append(time.perf_counter() - t)
  kernels = {k: (n // reps, s / reps) for k, (n, s) in by.items()}
  kinds = {}
  for k, (n, s) in kernels.items(): kinds[kind(k)] = kinds.get(kind(k), 0.0) + s
  total = sum(s for _, s in kernels.values())
  return dict(total=total, whole=float(np.median(whole)), launches=len(step.launches), kinds=kinds,
              top=sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top])


def run_torch(python: str, yardstick: str, model: str, steps: int) -> dict:
  r = subprocess.run([python, yardstick, model, "--reps", str(steps)], capture_output=True, text=True, timeout=1800)
  got = {m: float(v) / 1e3 for m, v in re.findall(rf"ANCHOR torch_(eager|compile)_cpu_{model}_tiny_step (\S+) ms", r.stdout)}
  if not got: print(f"torch yardstick failed: {r.stdout[-1000:]} {r.stderr[-2000:]}", flush=True)
  return got


def show_profile(name: str, p: dict, step: float):
  print(f"\nprofile of one {name} replay: {p['launches']} launches, kernels timed alone {p['total'] * 1e3:.2f} ms, "
        f"a whole replay {p['whole'] * 1e3:.2f} ms (the step {step * 1e3:.2f} ms: input copies and host values included)")
  for k, s in sorted(p["kinds"].items(), key=lambda kv: -kv[1]): print(f"  {k:16s} {s * 1e3:8.2f} ms {s / p['total']:6.1%}")
  print(f"  {'replay overhead':16s} {(p['whole'] - p['total']) * 1e3:8.2f} ms (a whole replay less its kernels)")
  for k, (n, s) in p["top"]: print(f"    {s * 1e3:7.3f} ms x{n:<3d} {k}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("models", nargs="*", default=list(RECIPES), help="llama, resnet (default both)")
  ap.add_argument("--torch", default=TORCH_PYTHON if os.path.exists(TORCH_PYTHON) else None, help="a Python with torch (the yardstick)")
  ap.add_argument("--yardstick", default=YARDSTICK, help="torch_cpu.py (default ../shared/yardsticks/torch_cpu.py)")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--rounds", type=int, default=1)
  ap.add_argument("--profile", action="store_true")
  a = ap.parse_args()
  if set(a.models) - set(RECIPES): ap.error(f"models: choose from {list(RECIPES)}")
  torch = a.torch if a.torch and os.path.exists(a.torch) and os.path.exists(a.yardstick) else None
  print(f"device: CPU:0 = {cpu_name()}, {os.cpu_count()} cores; torch: {torch or 'none (ours only)'}", flush=True)
  rows = []
  for model in a.models:
    for rnd in range(a.rounds):
      ours = run_ours(model, a.steps, a.profile and rnd == 0)
      theirs = run_torch(torch, a.yardstick, model, a.steps) if torch else {}
      rows.append((model, rnd, ours, theirs))
      ratio = lambda m: f" {theirs[m] / ours['step']:.2f}x" if m in theirs else ""
      print(f"{model}_tiny round {rnd + 1}: ours {ours['step'] * 1e3:.2f} ms/step ({ours['batch'] * ours['per_sample'] / ours['step']:,.0f} {ours['unit']}/s; "
            f"the loop's whole step {ours['loop'] * 1e3:.2f} ms), {ours['kernels']} kernels, peak {ours['first_peak'] / 2**20:.1f} MiB "
            f"(replay {ours['replay_peak'] / 2**20:.1f} MiB)" + "".join(f"; torch {m} {theirs[m] * 1e3:.2f} ms{ratio(m)}" for m in ("eager", "compile") if m in theirs),
            flush=True)
      if "profile" in ours: show_profile(f"{model}_tiny", ours["profile"], ours["step"])
  print(f"\n| step (median of {a.steps}) | ours ms | torch eager ms | torch.compile ms | eager / ours | compile / ours | kernels | peak MiB (first step / replay) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for model, rnd, o, t in rows:
    f = lambda m: f"{t[m] * 1e3:.2f}" if m in t else "-"
    r = lambda m: f"{t[m] / o['step']:.2f}x" if m in t else "-"
    print(f"| {model}_tiny{f' (round {rnd + 1})' if a.rounds > 1 else ''} | {o['step'] * 1e3:.2f} | {f('eager')} | {f('compile')} | {r('eager')} | {r('compile')} "
          f"| {o['kernels']} | {o['first_peak'] / 2**20:.1f} / {o['replay_peak'] / 2**20:.1f} |")


if __name__ == "__main__":
  main()
