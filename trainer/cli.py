"""The command line behind launch.py: parse arguments, validate the recipe and the host, then either
print the plan (--dry-run) or run the training loop. Every user error is one line and exit code 2, a
step whose memory plan does not fit the devices too (before any work); running out of device memory
during training is one line and exit code 3.

Started as several processes (mpirun -n H, srun), one per host: the hosts connect over MPI first, every host checks
its own input and the verdicts are agreed (with digests of the recipe and of the code, and a probe of the shared
checkpoint folder), so bad input is one line from host 0 and exit code 2 on every host; an error during the run
ends the whole job with one line naming the host (parallel/hosts.py)."""
from __future__ import annotations
import argparse, dataclasses, datetime, os, sys
from .config import ConfigError, load_config, validate_mesh
from .plan import param_count, plan_memory, with_capacity, refusal
from .projection import projection
from .parallel.hosts import HostError, MPIHosts, SingleHost, launched

DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "llama_tiny.yaml")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="launch.py", description="Train a recipe to its MLPerf target, writing MLPerf logs and a results tree.")
  p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help="recipe YAML (default: recipes/llama_tiny.yaml, a CPU run of a few minutes)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. --set train.seed=3")
  p.add_argument("--resume", metavar="DIR|auto", help="resume from a checkpoint folder, or the newest complete one (auto)")
  p.add_argument("--results", metavar="DIR", help="submission folder for results/ and systems/ (default: results/<submission_org>)")
  p.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
  p.add_argument("--dry-run", action="store_true", help="validate recipe, data and devices, print the plan, and exit")
  p.add_argument("--step-time", type=float, metavar="SECONDS", help="--dry-run: a measured one-host step time for the multi-host projection")
  p.add_argument("--mfu", type=float, default=0.40, help="--dry-run: the model FLOP utilisation the projection assumes without --step-time (0.40)")
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


def plan(cfg, step_time=None, mfu=0.40) -> list[str]:
  """The dry-run report: resolved config, sizes, memory per device, steps, and what is missing."""
  lines = [f"recipe {cfg.recipe}: benchmark {cfg.benchmark} ({cfg.mlperf.division} division)"]
  n, mesh, t = param_count(cfg), cfg.mesh, cfg.train
  p = t.precision
  lines.append(f"model: {cfg.model.name}, {n / 1e6:,.1f}M parameters; mesh hosts={mesh.hosts} dp={mesh.dp} tp={mesh.tp} zero1={mesh.zero1} on {mesh.device}")
  lines.append(f"step: micro-batch {t.micro_batch_size} x {t.gradient_accumulation_steps} accumulation x dp {mesh.dp}{f' x hosts {mesh.hosts}' if mesh.hosts > 1 else ''}; recompute {t.recompute}; "
               f"compute {p.compute_dtype}, master weights and moments {p.param_dtype}, gradients travel in {p.comm_dtype}")
  mem = with_capacity(cfg, plan_memory(cfg))
  lines += mem.lines()
  if not mem.fits: lines.append(f"REFUSED {refusal(cfg, mem)}")
  gb = cfg.train.global_batch_size
  if cfg.train.max_samples: lines.append(f"plan: up to {cfg.train.max_samples // gb:,} steps of {gb} samples (cap {cfg.train.max_samples:,} samples), eval every {cfg.eval_every_samples:,} samples on {cfg.eval.samples} samples, target {cfg.eval.target}")
  else: lines.append(f"plan: up to {cfg.train.max_epochs} epochs of {cfg.steps_per_epoch} steps at batch {gb}, eval every {cfg.eval.interval_epochs} epochs, target {cfg.eval.target}")
  lines += projection(cfg, step_time, mfu)
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
  rank, size = launched()
  cfg, error = None, None
  try:
    cfg = load_config(args.recipe, overrides)
  except ConfigError as e:
    error = (2, f"error: {e}")
  if size == 1:   # one process: one host, no MPI
    if error: return _say(error)
    if args.dry_run:
      print("\n".join(plan(cfg, args.step_time, args.mfu))); return 0
    if cfg.mesh.hosts > 1:
      return _say((2, f"error: the recipe's mesh.hosts is {cfg.mesh.hosts}: start one process per host with mpirun -n {cfg.mesh.hosts} "
                      f"or srun --ntasks-per-node=1 (README, Multi-host)"))
    return _say(preflight(cfg)) or train(args, cfg, SingleHost())
  # several processes, one per host: MPI first, so that every host's verdict on its input is agreed before any work
  try:
    hosts = MPIHosts(cfg.mesh.timeout_s if cfg else 300.0)
  except (ImportError, HostError) as e:
    return _say((2, f"error: {e if isinstance(e, HostError) else 'several processes need mpi4py and an MPI library: pip install -e .[multihost]'}")) if rank == 0 else 2
  if error is None and args.dry_run:
    if hosts.rank == 0: print("\n".join(plan(cfg, args.step_time, args.mfu)))
    hosts.close(); return 0
  if error is None and cfg.mesh.hosts != hosts.size:
    error = (2, f"error: the recipe's mesh.hosts is {cfg.mesh.hosts} but {hosts.size} processes were started (one per host)")
  error = agree(hosts, cfg, error or preflight(cfg))
  if error:
    if hosts.rank == 0: _say(error)
    hosts.close(); return error[0]
  code = train(args, cfg, hosts)
  hosts.close()
  return code


def _say(error) -> int | None:
  """Print an (exit code, line) error and return its code; None passes through."""
  if error is None: return None
  print(error[1], file=sys.stderr); sys.stderr.flush()
  return error[0]


def preflight(cfg):
  """What this host can check before any work: its devices, the data, the memory plan. (2, line) or None."""
  have, why = available_devices(cfg.mesh.device)
  try:
    validate_mesh(cfg, have)
  except ConfigError as e:
    return 2, f"error: {e}" + (f" ({why})" if why else "")
  absent = data_paths(cfg)[1]
  if absent: return 2, f"error: data missing: {absent[0]} (set data.path to the folder that holds the recipe's data)"
  mem = with_capacity(cfg, plan_memory(cfg))
  if not mem.fits: return 2, f"error: {refusal(cfg, mem)}"
  return None


def agree(hosts, cfg, error):
  """Every host's verdict, agreed: the first host's error, else hosts given another recipe or other overrides (a digest
  of the resolved recipe), running other code (a digest of the project's source), or not sharing the checkpoint
  folder. The same (code, line) or None on every host."""
  import hashlib, json, secrets
  from .source import source_digest
  recipe = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()).hexdigest() if cfg else ""
  views = hosts.allgather((error, recipe, source_digest()))
  bad = lambda i: [h for h, v in enumerate(views) if v[i] != views[0][i]]
  for h, (e, _, _) in enumerate(views):
    if e: return e if h == 0 else (e[0], f"{e[1]} (on host {h})")
  hosts_ = lambda hs: f"host{'s' * (len(hs) > 1)} {', '.join(map(str, hs))}"
  if bad(1): return 2, f"error: {hosts_(bad(1))} got another recipe or other --set overrides than host 0"
  if bad(2): return 2, f"error: {hosts_(bad(2))} {'run' if len(bad(2)) > 1 else 'runs'} other code than host 0 (the trainer's sources differ)"
  token = hosts.bcast(secrets.token_hex(8) if hosts.rank == 0 else None)   # the checkpoint folder must be one shared folder
  probe = os.path.join(cfg.checkpoint.dir, f".hosts_{token}")
  if hosts.rank == 0:
    os.makedirs(cfg.checkpoint.dir, exist_ok=True)
    with open(probe, "w") as f: f.write(token)
  hosts.barrier()
  sees = hosts.allgather(os.path.exists(probe))
  hosts.barrier()
  if hosts.rank == 0: os.remove(probe)
  blind = [h for h, ok in enumerate(sees) if not ok]
  if blind: return 2, (f"error: the checkpoint folder {cfg.checkpoint.dir} is not shared: {hosts_(blind)} cannot see host 0's files "
                       "there (put it on a file system every host mounts)")
  return None


def fail(hosts, code: int, line: str) -> int:
  """An error during the run: one line and exit `code`; on several hosts the whole job ends (MPI_Abort)."""
  if hosts.size == 1: return _say((code, line))
  hosts.fail(code, line)


def train(args, cfg, hosts) -> int:
  """Build the run and train it: every host's part."""
  from .loop import Run
  from .results import default_root
  from .core.device import OutOfMemoryError, get_runtime
  mem = with_capacity(cfg, plan_memory(cfg))
  root = args.results or default_root(cfg)
  lead = hosts.rank == 0
  if lead: os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  log_path = hosts.bcast(os.path.join(root, "logs", f"{cfg.benchmark}_{datetime.datetime.now():%Y%m%d_%H%M%S_%f}_{os.getpid()}.log"))
  try:
    run = Run(cfg, log_path, root, resume=args.resume, progress=not args.no_progress, hosts=hosts)
    run.init()
  except (FileNotFoundError, ValueError) as e:
    return fail(hosts, 2, f"error: {e}")
  try:
    run.train(max_steps=args.max_steps, print_losses=args.print_losses)
  except OutOfMemoryError as e:   # the last checkpoint is untouched: checkpoints are written whole or not at all
    return fail(hosts, 3, f"error: {e} at step {run.step + 1}; the plan's peak for this device is {mem.peak / 2**30:,.2f} GiB")
  peaks = [get_runtime(d).peak_in_use for d in run.mesh.devices()]
  if lead: print(f"peak device memory {max(peaks) / 2**30:,.2f} GiB (plan {mem.peak / 2**30:,.2f} GiB, {mem.phase}); per device "
                 + " ".join(f"{p / 2**30:.2f}" for p in peaks))
  if args.max_steps is not None and not run.success and not run._cap_reached():
    if lead: print(f"stopped after {args.max_steps} steps (--max-steps); resume with --resume auto")
    return 0
  result = run.finish()
  status = "reached the target" if run.success else "stopped at the sample cap without reaching the target"
  last = run.evals[-1] if run.evals else None
  if lead: print(f"{cfg.benchmark}: {status} after {run.step} steps ({run.samples:,} samples)"
                 + (f"; last eval {run.task.metric} {last[1]:.4f} at {last[0]}" if last else "") + f"\nMLPerf log: {result or log_path}")
  return 0 if run.success else 1
