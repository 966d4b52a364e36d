"""The command line behind launch.py: parse arguments, validate the recipe and the host, then either
print the plan (--dry-run) or run the training loop. Every user error is one line and exit code 2, a
step whose memory plan does not fit the devices too (before any work); running out of device memory
during training is one line and exit code 3."""
from __future__ import annotations
import argparse, dataclasses, datetime, os, sys
from .config import ConfigError, load_config, validate_mesh
from .plan import param_count, plan_memory, with_capacity, refusal

DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "llama_tiny.yaml")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="launch.py", description="Train a recipe to its MLPerf target, writing MLPerf logs and a results tree.")
  p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe YAML (default: recipes/llama_tiny.yaml, a CPU run of a few minutes)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. --set train.seed=3")
  p.add_argument("--resume", metavar="DIR|auto", help="resume from a checkpoint folder, or the newest complete one (auto)")
  p.add_argument("--results", metavar="DIR", help="submission folder for results/ and systems/ (default: results/<submission_org>)")
  p.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
  p.add_argument("--dry-run", action="store_true", help="validate recipe, data and devices, print the plan, and exit")
  p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)        # tests: stop at step N without finishing the run
  p.add_argument("--print-losses", action="store_true", help=argparse.SUPPRESS)   # tests: every step's loss, exactly
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def available_devices(backend: str) -> tuple[int, str]:
  """How many devices of a backend this host has, and why not, if none."""
  from .core.device import device_count
  try:
    return device_count(backend), ""
  except Exception as e:   # a missing driver or library is reported, not raised
    return 0, f"{type(e).__name__}: {e}"


def plan(cfg) -> list[str]:
  """The dry-run report: resolved config, sizes, memory per device, steps, and what is missing."""
  lines = [f"recipe {cfg.recipe}: benchmark {cfg.benchmark} ({cfg.mlperf.division} division)"]
  n, mesh, t = param_count(cfg), cfg.mesh, cfg.train
  p = t.precision
  lines.append(f"model: {cfg.model.name}, {n / 1e6:,.1f}M parameters; mesh dp={mesh.dp} tp={mesh.tp} zero1={mesh.zero1} on {mesh.device}")
  lines.append(f"step: micro-batch {t.micro_batch_size} x {t.gradient_accumulation_steps} accumulation x dp {mesh.dp}; recompute {t.recompute}; "
               f"compute {p.compute_dtype}, master weights and moments {p.param_dtype}, gradients travel in {p.comm_dtype}")
  mem = with_capacity(cfg, plan_memory(cfg))
  lines += mem.lines()
  if not mem.fits: lines.append(f"REFUSED {refusal(cfg, mem)}")
  gb = cfg.train.global_batch_size
  if cfg.train.max_samples: lines.append(f"plan: up to {cfg.train.max_samples // gb:,} steps of {gb} samples (cap {cfg.train.max_samples:,} samples), eval every {cfg.eval_every_samples:,} samples on {cfg.eval.samples} samples, target {cfg.eval.target}")
  else: lines.append(f"plan: up to {cfg.train.max_epochs} epochs of {cfg.steps_per_epoch} steps at batch {gb}, eval every {cfg.eval.interval_epochs} epochs, target {cfg.eval.target}")
  lines.append("config: " + repr(dataclasses.asdict(cfg)))
  missing = []
  have, why = available_devices(mesh.device)
  if have < mesh.dp * mesh.tp: missing.append(f"devices: the mesh needs {mesh.dp * mesh.tp} {mesh.device} devices, this host has {have}" + (f" ({why})" if why else ""))
  names, absent = data_paths(cfg)
  if absent: missing.append(f"data: {len(absent)} of {len(names)} paths missing, e.g. {absent[0]}")
  lines += [f"MISSING {m}" for m in missing] or ["ready: devices and data present"]
  return lines


def data_paths(cfg) -> tuple[list[str], list[str]]:
  """The files or folders the recipe's data needs, and those of them that are missing."""
  d = cfg.data
  if d.kind not in ("c4", "imagenet"): return [], []
  names = [os.path.join(d.path, x + e) for x in (*d.train_prefixes, d.validation_prefix) for e in (".bin", ".idx")] if d.kind == "c4" \
    else [os.path.join(d.path, s) for s in ("train", "val")]
  return names, [f for f in names if not os.path.exists(f)]


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  overrides = list(args.overrides) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
  try:
    cfg = load_config(args.recipe, overrides)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr); return 2
  if args.dry_run:
    print("\n".join(plan(cfg))); return 0
  have, why = available_devices(cfg.mesh.device)
  try:
    validate_mesh(cfg, have)
  except ConfigError as e:
    print(f"error: {e}" + (f" ({why})" if why else ""), file=sys.stderr); return 2
  absent = data_paths(cfg)[1]
  if absent:
    print(f"error: data missing: {absent[0]} (set data.path to the folder that holds the recipe's data)", file=sys.stderr); return 2
  mem = with_capacity(cfg, plan_memory(cfg))
  if not mem.fits:
    print(f"error: {refusal(cfg, mem)}", file=sys.stderr); return 2
  from .loop import Run
  from .results import default_root
  from .core.device import OutOfMemoryError, get_runtime
  root = args.results or default_root(cfg)
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  log_path = os.path.join(root, "logs", f"{cfg.benchmark}_{datetime.datetime.now():%Y%m%d_%H%M%S_%f}_{os.getpid()}.log")
  try:
    run = Run(cfg, log_path, root, resume=args.resume, progress=not args.no_progress)
    run.init()
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr); return 2
  try:
    run.train(max_steps=args.max_steps, print_losses=args.print_losses)
  except OutOfMemoryError as e:   # the last checkpoint is untouched: checkpoints are written whole or not at all
    print(f"error: {e} at step {run.step + 1}; the plan's peak for this device is {mem.peak / 2**30:,.2f} GiB", file=sys.stderr)
    return 3
  peaks = [get_runtime(d).peak_in_use for d in run.mesh.devices()]
  print(f"peak device memory {max(peaks) / 2**30:,.2f} GiB (plan {mem.peak / 2**30:,.2f} GiB, {mem.phase}); per device "
        + " ".join(f"{p / 2**30:.2f}" for p in peaks))
  if args.max_steps is not None and not run.success and not run._cap_reached():
    print(f"stopped after {args.max_steps} steps (--max-steps); resume with --resume auto"); return 0
  result = run.finish()
  status = "reached the target" if run.success else "stopped at the sample cap without reaching the target"
  last = run.evals[-1] if run.evals else None
  print(f"{cfg.benchmark}: {status} after {run.step} steps ({run.samples:,} samples)"
        + (f"; last eval {run.task.metric} {last[1]:.4f} at {last[0]}" if last else "") + f"\nMLPerf log: {result or log_path}")
  return 0 if run.success else 1
