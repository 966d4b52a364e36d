"""The llama31_8b recipe against the MLPerf reference (mlcommons/training small_llm_pretraining/nemo: NeMo 2.1 on
Megatron-core) and the training rules: seeds, initialisation, weight-decay groups, the page-cache flush, the LR
schedule, the end-LR rule and the evaluation cadence. Each test fails on the trainer before these were matched."""
import json, math, os
import numpy as np
import pytest
from trainer.config import ConfigError, load_config
from trainer.nn.schedule import warmup_cosine_lr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA31 = os.path.join(ROOT, "recipes/llama31_8b.yaml")
TINY = os.path.join(ROOT, "recipes/llama_tiny.yaml")
SMALL = ["mesh.device=CPU", "mesh.dp=1", "mesh.zero1=false", "train.micro_batch_size=16", "model.n_heads=4", "model.n_kv_heads=4",
         "model.vocab_size=64"]


def logged(path):
  out = {}
  for line in open(path):
    if line.startswith(":::MLLOG"):
      r = json.loads(line.split(" ", 1)[1]); out.setdefault(r["key"], []).append(r)
  return out


# ---- 1. a run without a seed draws one, logs it, and a resume keeps it ----
def test_the_benchmark_recipe_names_no_seed():
  assert load_config(LLAMA31).train.seed is None
  assert load_config(LLAMA31, ["train.seed=5"]).train.seed == 5


def test_a_drawn_seed_is_logged_and_kept_by_a_resume(tmp_path):
  from trainer.loop import Run
  over = ["model.n_layers=1", "model.dim=32", "model.ffn_dim=64", "train.global_batch_size=4", "train.micro_batch_size=4",
          "data.seq_len=32", "model.max_seq_len=32", "eval.samples=8", "checkpoint.every_steps=1", "train.seed=null"]
  seeds = []
  for name in ("a", "b"):
    cfg = load_config(TINY, over + [f"checkpoint.dir={tmp_path}/{name}"])
    assert cfg.train.seed is None
    run = Run(cfg, str(tmp_path / f"{name}.log"), None, progress=False)
    run.init(); run.train(max_steps=1); run.log.close()
    seeds.append(logged(tmp_path / f"{name}.log")["seed"][0]["value"])
    assert run.cfg.train.seed == seeds[-1] and 0 <= seeds[-1] < 2**31
  assert seeds[0] != seeds[1]                       # drawn from the OS (a 1 in 2**31 chance of a false failure)
  cfg = load_config(TINY, over + [f"checkpoint.dir={tmp_path}/a"])
  again = Run(cfg, str(tmp_path / "c.log"), None, resume="auto", progress=False)
  again.init()
  assert again.cfg.train.seed == seeds[0]
  pinned = load_config(TINY, over[:-1] + ["train.seed=77", f"checkpoint.dir={tmp_path}/a"])
  with pytest.raises(ValueError, match="seed"):       # an explicit seed that is not the checkpoint's
    Run(pinned, str(tmp_path / "d.log"), None, resume="auto", progress=False).init()


# ---- 2. output projections: std 0.02 / sqrt(2 * layers) (Megatron's output_layer_init_method) ----
def test_output_projections_are_initialised_with_the_scaled_std():
  from trainer.build import build_model
  cfg = load_config(LLAMA31, SMALL + ["model.dim=256", "model.ffn_dim=512", "model.n_layers=8"])
  model = build_model(cfg, "CPU:0")
  scaled = 0.02 / math.sqrt(2 * 8)
  for name, p in model.named_parameters():
    if p.ndim != 2: continue
    std = float(p.numpy().astype(np.float64).std())
    want = scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
    assert abs(std / want - 1) < 0.03, (name, std, want)


# ---- 3. no weight decay on biases and 1-D parameters (Megatron-core's default parameter groups) ----
@pytest.mark.parametrize("mesh", [["mesh.dp=1"], ["mesh.dp=2", "mesh.zero1=true", "train.micro_batch_size=8"]])
def test_norm_weights_get_no_weight_decay(tmp_path, mesh):
  from trainer.loop import Run
  from trainer.data.tiny_corpus import build_markov_c4
  build_markov_c4(str(tmp_path / "c4"), vocab=64, seq_len=8192, train_samples=16, validation_samples=4)
  cfg = load_config(LLAMA31, SMALL + ["model.dim=32", "model.ffn_dim=64", "model.n_layers=1", f"data.path={tmp_path}/c4",
                                      "eval.samples=4", "mlperf.division=open", f"checkpoint.dir={tmp_path}/ck"] + mesh)
  run = Run(cfg, str(tmp_path / "log"), None, progress=False)
  run.init()
  shapes = dict((n, p.shape) for n, p in run.models[0].named_parameters())
  for opt in run.opt.opts:
    for (name, _), decays in zip(opt.named, opt.decay):
      assert decays == (len(shapes[name]) > 1), name


# ---- 4. the page cache is dropped before a benchmark run; the log says whether it was ----
def test_drop_page_cache_reports_what_happened(tmp_path):
  from trainer.page_cache import drop_page_cache
  target = tmp_path / "drop_caches"
  target.write_text("")
  assert drop_page_cache(str(target)) == (True, "")
  assert target.read_text().strip() == "3"
  ok, why = drop_page_cache(str(tmp_path / "no" / "such" / "file"))
  assert not ok and "such" in why


def test_cache_clear_is_logged_as_it_happened(tmp_path, monkeypatch):
  from trainer import page_cache
  from trainer.cli import main
  from trainer.data.tiny_corpus import build_markov_c4
  build_markov_c4(str(tmp_path / "c4"), vocab=64, seq_len=8192, train_samples=16, validation_samples=4)
  args = [LLAMA31, *[a for kv in SMALL + ["model.dim=16", "model.ffn_dim=16", "model.n_layers=0", f"data.path={tmp_path}/c4",
                                          "eval.samples=4", "mlperf.division=open"] for a in ("--set", kv)], "--max-steps", "1", "--no-progress"]
  for writable, want in ((True, True), (False, False)):
    path = tmp_path / f"drop{writable}"
    if writable: path.write_text("")
    monkeypatch.setattr(page_cache, "DROP_CACHES", str(path if writable else tmp_path / "missing" / "drop"))
    res = tmp_path / f"res{writable}"
    assert main(args + ["--set", f"checkpoint.dir={tmp_path}/ck{writable}", "--results", str(res)]) == 0
    log = next((res / "logs").iterdir())
    assert logged(log)["cache_clear"][0]["value"] is want


# ---- 5. NeMo's warmup: lr * (s + 1) / (W + 1) for s <= W, then cosine over (s - W) / (max_steps - W) ----
def test_warmup_matches_nemo():
  W, D, base, end = 16, 84, 4e-4, 4e-5
  for s in range(W + 1): assert math.isclose(warmup_cosine_lr(s, base, W, D, end), base * (s + 1) / (W + 1))
  for s in (W + 1, W + 42, W + D - 1): assert math.isclose(warmup_cosine_lr(s, base, W, D, end), end + (base - end) * 0.5 * (1 + math.cos(math.pi * (s - W) / D)))
  assert warmup_cosine_lr(W + D + 5, base, W, D, end) == end


# ---- 6. the end LR is 0.1 x the base LR in the closed division ----
def test_end_lr_follows_the_base_lr_in_the_closed_division():
  assert load_config(LLAMA31).schedule.end_lr == pytest.approx(4e-5)
  assert load_config(LLAMA31, ["optimizer.lr=8e-4"]).schedule.end_lr == pytest.approx(8e-5)
  with pytest.raises(ConfigError, match=r"end_lr.*0\.1"):
    load_config(LLAMA31, ["optimizer.lr=8e-4", "schedule.end_lr=4e-5"])
  assert load_config(LLAMA31, ["optimizer.lr=8e-4", "schedule.end_lr=4e-5", "mlperf.division=open"]).schedule.end_lr == 4e-5


# ---- 7. evaluation every ceil(12288 / GBS) * GBS samples ----
def test_evaluation_cadence_rounds_the_interval_up_to_whole_batches(tmp_path):
  from trainer.loop import Run
  assert load_config(LLAMA31, ["train.global_batch_size=20", "train.micro_batch_size=20"] + SMALL[:3]).eval_every_samples == 12300
  assert load_config(LLAMA31).eval_every_samples == 12288
  cfg = load_config(TINY, ["model.n_layers=1", "model.dim=32", "model.ffn_dim=64", "train.global_batch_size=16", "train.micro_batch_size=16",
                           "data.seq_len=32", "model.max_seq_len=32", "eval.samples=8", "eval.interval_samples=40", "eval.target=0.1",
                           f"checkpoint.dir={tmp_path}/ck"])
  run = Run(cfg, str(tmp_path / "log"), None, progress=False)
  run.init(); run.train(max_steps=7); run.log.close()
  assert [r["metadata"]["samples_count"] for r in logged(tmp_path / "log")["eval_start"]] == [48, 96]


# ---- 13. the system description names the accelerator as its runtime does ----
def test_the_accelerator_model_name_comes_from_the_runtime(monkeypatch):
  from trainer import results
  from trainer.core import device

  class FakeRuntime:
    device_name = "NVIDIA H200"
  monkeypatch.setattr(device, "get_runtime", lambda name: FakeRuntime())
  assert results.accelerators(load_config(LLAMA31)) == ("NVIDIA H200", 8)
  assert results.accelerators(load_config(LLAMA31, ["mesh.device=CPU"])) == ("", 0)


# ---- 16. MFU from the peak of the device that runs ----
def test_peaks_come_from_the_device_that_runs(tmp_path):
  from trainer.peak import gpu_peak, cpu_peak, GPU_PEAKS
  assert gpu_peak("NVIDIA H200", "bfloat16") == 989.4e12 and gpu_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert gpu_peak("NVIDIA H100 80GB HBM3", "float32") == 67e12 and gpu_peak("NVIDIA A100-SXM4-80GB", "float16") == 312e12
  assert gpu_peak("AMD Instinct MI300X", "bfloat16") == 1307.4e12 and gpu_peak("AMD Radeon RX 7900 XTX", "bfloat16") == 122.8e12
  assert gpu_peak("NVIDIA GeForce RTX 4090", "bfloat16") is None            # unknown: no MFU rather than a guess
  assert all(src for *_, src in GPU_PEAKS)
  info = tmp_path / "cpuinfo"
  core = "processor\t: {i}\nmodel name\t: Test CPU\ncpu MHz\t\t: 2400.000\nphysical id\t: 0\ncore id\t\t: {c}\nflags\t\t: sse avx avx2 fma\n"
  info.write_text("\n".join(core.format(i=i, c=i // 2) for i in range(4)))   # 2 cores with 2 threads each
  assert cpu_peak(str(info), str(tmp_path / "none")) == 2 * 2.4e9 * 2 * 2 * 8


def test_the_progress_bar_mfu_is_below_one_on_the_cpu(tmp_path):
  from trainer.loop import Run
  cfg = load_config(TINY, ["model.n_layers=1", "model.dim=64", "model.ffn_dim=128", "train.global_batch_size=8", "train.micro_batch_size=8",
                           "data.seq_len=64", "model.max_seq_len=64", "eval.samples=8", f"checkpoint.dir={tmp_path}/ck"])
  run = Run(cfg, str(tmp_path / "log"), None, progress=False)
  run.init(); run.train(max_steps=4)
  assert 0 < run.mfu < 1
