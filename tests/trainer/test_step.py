"""The launcher's training step (trainer.loop.Run) at small size on the CPU: gradient accumulation,
recompute, the precision keys, evaluation split over replicas, and the memory plan against measured peaks."""
import gc, json, os, subprocess, sys
import numpy as np
import pytest
from trainer.config import load_config
from trainer.loop import Run
from trainer.plan import plan_memory
from trainer.core.device import get_runtime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["model.n_layers=2", "model.dim=64", "model.ffn_dim=128", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=64",
        "model.max_seq_len=64", "eval.samples=16"]


def make_run(tmp_path, over, name="run"):
  cfg = load_config(os.path.join(ROOT, "recipes/llama_tiny.yaml"), TINY + over + [f"checkpoint.dir={tmp_path}/{name}", "checkpoint.every_steps=1000000"])
  run = Run(cfg, str(tmp_path / f"{name}.log"), None, progress=False)
  run.init()
  return run


def losses(run, steps):
  out = []
  for s in range(steps):
    run.train(max_steps=s + 1)
    out.append(run.last_loss)
  return out


def test_accumulated_micro_batches_give_the_losses_of_one_and_do_not_grow_memory(tmp_path):
  one = losses(make_run(tmp_path, ["train.global_batch_size=8", "train.micro_batch_size=8"], "one"), 4)
  four = losses(make_run(tmp_path, ["train.global_batch_size=8", "train.micro_batch_size=2"], "four"), 4)
  assert one[-1] < one[0]
  np.testing.assert_allclose(four, one, rtol=1e-5)   # float32 sums of 4 quarter-batch means against one mean: rounding only
  peaks = {}
  for accum in (1, 2, 8):
    gc.collect()   # earlier runs freed now, not while this one is measured
    rt = get_runtime("CPU:0")
    run = make_run(tmp_path, [f"train.global_batch_size={2 * accum}", "train.micro_batch_size=2"], f"a{accum}")
    rt.peak_in_use = base = rt.in_use
    run.train(max_steps=3)
    peaks[accum] = rt.peak_in_use - base
    sums = sum(4 * p.numel() for p in run.models[0].parameters())
    del run
  assert abs(peaks[8] - peaks[2]) <= 0.05 * peaks[2], peaks          # no growth with the number of micro-batches
  assert abs(peaks[8] - sums - peaks[1]) <= 0.05 * peaks[1], (peaks, sums)   # beyond one micro-batch: the float32 sums only


def test_recompute_from_the_recipe_gives_identical_losses(tmp_path):
  plain = losses(make_run(tmp_path, ["train.global_batch_size=4", "train.micro_batch_size=4"], "plain"), 3)
  again = losses(make_run(tmp_path, ["train.global_batch_size=4", "train.micro_batch_size=4", "train.recompute=layer"], "rc"), 3)
  assert plain == again


@pytest.mark.parametrize("compute,want", [("bfloat16", "bfloat16"), ("float32", "fp32")])
def test_precision_keys_say_what_the_step_ran_in(tmp_path, compute, want):
  run = make_run(tmp_path, ["train.global_batch_size=4", "train.micro_batch_size=4", f"train.precision.compute_dtype={compute}",
                            "train.precision.comm_dtype=bfloat16"])
  run.train(max_steps=1)
  run.log.close()
  keys = {}
  for line in open(tmp_path / "run.log"):
    if line.startswith(":::MLLOG"):
      r = json.loads(line.split(" ", 1)[1]); keys.setdefault(r["key"], []).append(r["value"])
  assert keys["lowest_numerical_precision_in_linear"] == [want] and keys["lowest_numerical_precision_in_attn"] == [want]
  assert keys["lowest_numerical_precision_in_comm"] == ["bfloat16"]
  assert all(p.dtype.name == compute for p in run.models[0].parameters())
  assert all(m is None or m.dtype.name == "float32" for m in run.opt.opts[0].master)


def test_evaluation_split_over_replicas_equals_one_device(tmp_path):
  one = make_run(tmp_path, ["train.global_batch_size=4", "train.micro_batch_size=4"], "e1")
  two = make_run(tmp_path, ["train.global_batch_size=4", "train.micro_batch_size=2", "mesh.dp=2"], "e2")
  a, b = one.evaluate(), two.evaluate()
  assert a == pytest.approx(b, rel=1e-6) and a > 1.0
  assert two.evaluate() == b                                        # the replayed evaluation gives the same figure


@pytest.mark.parametrize("over", [["model.n_layers=4"], ["model.n_layers=4", "train.recompute=layer"],
                                  ["train.global_batch_size=16", "train.micro_batch_size=4"], ["mesh.dp=2", "train.micro_batch_size=16"],
                                  ["mesh.tp=2"]])
def test_memory_plan_matches_the_measured_peak(tmp_path, over):
  run = make_run(tmp_path, ["train.global_batch_size=32", "train.micro_batch_size=32", "model.dim=128", "model.ffn_dim=384",
                            "data.seq_len=128", "model.max_seq_len=128"] + over)
  gc.collect()
  rts = [get_runtime(d) for d in run.mesh.devices()]
  for rt in rts: rt.peak_in_use = rt.in_use
  run.train(max_steps=3)
  got, plan = max(rt.peak_in_use for rt in rts), plan_memory(run.cfg).peak
  assert 0.9 <= got / plan <= 1.1, (got, plan)


def test_memory_plan_counts_what_the_fused_attention_path_keeps(tmp_path, monkeypatch):
  """The plan's per-layer count for the fused-attention path (the CUDA one), measured on the CPU: bfloat16 compute
  with the fused kernels' numpy references standing in for the CUDA kernels."""
  import trainer.plan
  from trainer.core.kernels import attention
  monkeypatch.setattr(attention, "covers", lambda q, *a, **kw: q.dtype.name == "bfloat16")   # the model's causal self-attention
  monkeypatch.setattr(trainer.plan, "fused_attention", lambda cfg: True)
  peaks, plans = [], []
  for n in (2, 3):
    run = make_run(tmp_path, [f"model.n_layers={n}", "train.global_batch_size=4", "train.micro_batch_size=4", "model.dim=128", "model.ffn_dim=384",
                              "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=128", "model.max_seq_len=128",
                              "train.precision.compute_dtype=bfloat16", "train.precision.comm_dtype=bfloat16"], name=f"fused{n}")
    gc.collect()
    rt = get_runtime("CPU:0")
    rt.peak_in_use = rt.in_use
    run.train(max_steps=1)
    peaks.append(rt.peak_in_use)
    plans.append(trainer.plan.plan_memory(run.cfg).peak)
    del run
  assert abs((peaks[1] - peaks[0]) / (plans[1] - plans[0]) - 1) < 0.02, (peaks, plans)
  assert all(abs(p / q - 1) < 0.05 for p, q in zip(peaks, plans)), (peaks, plans)


def test_a_step_that_does_not_fit_is_refused_in_one_line(tmp_path):
  from trainer.data.tiny_corpus import build_markov_c4
  build_markov_c4(str(tmp_path / "c4"), vocab=256, seq_len=8192, train_samples=16, validation_samples=1024)
  args = [sys.executable, os.path.join(ROOT, "launch.py"), os.path.join(ROOT, "recipes/llama31_8b.yaml"), "--set", "mesh.device=CPU",
          "--set", "mesh.dp=1", "--set", f"data.path={tmp_path}/c4"]
  dry = subprocess.run(args + ["--dry-run"], capture_output=True, text=True, cwd=tmp_path)
  assert dry.returncode == 0 and "REFUSED the step needs" in dry.stdout, dry.stdout
  r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "GiB per device" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_out_of_memory_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path):
  args = [sys.executable, os.path.join(ROOT, "launch.py"), os.path.join(ROOT, "recipes/llama_tiny.yaml"), "--no-progress",
          "--set", f"checkpoint.dir={tmp_path}/ck", "--set", "checkpoint.every_steps=1", "--results", str(tmp_path / "res")]
  first = subprocess.run(args + ["--max-steps", "1"] + [x for o in TINY for x in ("--set", o)], capture_output=True, text=True, cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  saved = sorted(os.listdir(tmp_path / "ck"))
  env = dict(os.environ, TRAINER_MEMORY_LIMIT=str(4 << 20))   # the tiny model fits 4 MiB, its step does not
  r = subprocess.run(args + ["--max-steps", "2", "--resume", "auto"] + [x for o in TINY for x in ("--set", o)], capture_output=True, text=True,
                     cwd=tmp_path, env=env)
  assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
  line = r.stderr.strip()
  assert "\n" not in line and "Traceback" not in r.stderr and "out of memory on CPU:0" in line and "at step 2" in line and "plan" in line, line
  assert sorted(os.listdir(tmp_path / "ck")) == saved


def test_tensor_parallel_shards_are_initialised_on_their_devices_as_slices_of_one_build():
  from trainer.build import build_replica
  from trainer.core import Tensor
  cfg = load_config(os.path.join(ROOT, "recipes/llama_tiny.yaml"), TINY)
  Tensor.manual_seed(7)
  whole = {n: t.numpy() for n, t in build_replica(cfg, ["CPU:5"]).named_parameters()}
  Tensor.manual_seed(7)
  sharded = build_replica(cfg, ["CPU:6", "CPU:7"])
  for n, s in sharded.named_parameters():
    assert [t.device for t in s.shards] == ["CPU:6", "CPU:7"], n
    np.testing.assert_array_equal(s.full().numpy(), whole[n], err_msg=n)
  assert len({whole[n].tobytes() for n in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight")}) == 2
