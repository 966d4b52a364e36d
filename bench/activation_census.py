"""What backward keeps of each Llama layer: the buffers alive at the peak of the launcher's step, by width.

  python bench/activation_census.py [--fused] [--layers 2,3] [--set key=value ...]

Runs the first step of trainer.loop.Run (the loop launch.py runs) on recipes/llama_tiny.yaml at a shape whose
widths all differ (dim 128 = 2 heads of 64, 1 kv head of 64, ffn 384, batch 4 x 128, bfloat16 compute) at two
layer counts. It notes the buffers made during the step that are alive when the device's live bytes peak and
prints them by width (dim, ffn, kv, other) and dtype, the difference per layer, and each peak against the memory
plan (trainer/plan.py). --fused runs the CUDA path's fused attention on the CPU through its numpy references
(what the plan counts for CUDA); without it the attention is composed of primitive ops (the CPU's own path).
Memory only: the step's kernels are the ones any device would run, so the census holds on GPUs too.
"""
from __future__ import annotations
import argparse, collections, gc, os, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from trainer.config import load_config
from trainer.core import device
from trainer.core.kernels import attention
from trainer.loop import Run
import trainer.plan

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
B, T, DIM, FFN, KV = 4, 128, 128, 384, 64
SHAPE = [f"model.dim={DIM}", f"model.ffn_dim={FFN}", "model.n_heads=2", "model.n_kv_heads=1", f"data.seq_len={T}", f"model.max_seq_len={T}",
         f"train.global_batch_size={B}", f"train.micro_batch_size={B}", "eval.samples=16",
         "train.precision.compute_dtype=bfloat16", "train.precision.comm_dtype=bfloat16"]


class PeakWatch:
  """Notes (uid, elements, dtype) of the live buffers each time a CPU:0 allocation reaches a new peak."""
  def __init__(self):
    self.live, self.at_peak, self.armed = {}, [], False
    self.init, self.dele = device.Buffer.__init__, device.Buffer.__del__
    watch = self
    def init(buf, *a, **k):
      watch.init(buf, *a, **k)
      watch.live[buf.uid] = (buf.size, buf.dtype.name)
      rt = buf.runtime
      if watch.armed and rt.in_use == rt.peak_in_use: watch.at_peak = list(watch.live.items())
    def dele(buf):
      watch.live.pop(getattr(buf, "uid", None), None)
      watch.dele(buf)
    device.Buffer.__init__, device.Buffer.__del__ = init, dele


def census(layers: int, extra: list[str], watch: PeakWatch):
  cfg = load_config(os.path.join(ROOT, "recipes/llama_tiny.yaml"), SHAPE + [f"model.n_layers={layers}", f"checkpoint.dir={tempfile.mkdtemp()}",
                                                                          "checkpoint.every_steps=1000000000"] + extra)
  run = Run(cfg, os.path.join(tempfile.mkdtemp(), "log"), None, progress=False)
  run.init()
  gc.collect()
  rt = device.get_runtime("CPU:0")
  rt.peak_in_use, before = rt.in_use, set(watch.live)
  watch.armed = True
  run.train(max_steps=1)
  watch.armed = False
  tokens = B * T
  names = {DIM: "dim", FFN: "ffn", KV: "kv"}
  kinds = collections.Counter()
  for uid, (size, dt) in watch.at_peak:
    if uid in before: continue
    kinds[(names.get(size // tokens, f"{size // tokens} per token") if size % tokens == 0 else f"{size} elements", dt)] += 1
  return kinds, rt.peak_in_use, trainer.plan.plan_memory(run.cfg).peak


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--fused", action="store_true", help="the fused attention (CUDA's path) through its numpy references")
  ap.add_argument("--layers", default="2,3", help="two layer counts, comma-separated")
  ap.add_argument("--set", action="append", default=[], help="a recipe override, key=value")
  a = ap.parse_args()
  if a.fused:   # the tiny model's attention is causal self-attention with no mask: what the fused kernels cover
    attention.covers = lambda q, *args, **kw: q.dtype.name in ("bfloat16", "float16")
    trainer.plan.fused_attention = lambda cfg: True
  lo, hi = (int(x) for x in a.layers.split(","))
  watch = PeakWatch()
  (k0, p0, q0), (k1, p1, q1) = census(lo, a.set, watch), census(hi, a.set, watch)
  print(f"attention: {'fused (numpy references)' if a.fused else 'composed'}; batch {B} x {T}, dim {DIM}, ffn {FFN}, kv {KV}")
  print(f"{'buffers at the peak':28s} {lo:>3d} layers {hi:>3d} layers  per layer")
  for key in sorted(set(k0) | set(k1), key=lambda k: (-k1.get(k, 0), k)):
    print(f"  {key[0] + ' ' + key[1]:26s} {k0.get(key, 0):10d} {k1.get(key, 0):10d} {(k1.get(key, 0) - k0.get(key, 0)) / (hi - lo):10g}")
  print(f"peak bytes: {p0:,} and {p1:,} (plan {q0:,.0f} and {q1:,.0f}); per layer {(p1 - p0) / (hi - lo):,.0f} (plan {(q1 - q0) / (hi - lo):,.0f})")


if __name__ == "__main__":
  main()
