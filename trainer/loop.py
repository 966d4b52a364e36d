"""The training loop: from a validated Config to a finished MLPerf run.

init (model, data, optimizer, JIT warm-up) -> run_start -> blocks of training steps between
evaluations -> stop at the target quality or the sample cap -> run_stop, result file, system JSON.
Checkpoints (trainer.checkpoint) hold the model, optimizer state, RNG state, data position, step and
the MLPerf bookkeeping; a resumed run appends to the same log and continues the same stream of
batches and random numbers, so its losses equal the uninterrupted run's.

On several hosts (`hosts`, parallel/hosts.py) every host runs this loop on its own devices as one run: host h reads
the slice of each global batch that global replicas h x dp .. (h + 1) x dp - 1 of a one-host run would read, the
loss, the evaluation metric and so every decision (non-finite loss, target reached, checkpoint due, stop) come
from values summed over the hosts, and host 0 alone writes the MLPerf log, the progress bar and the results. A
watchdog ends the job when a step, an evaluation batch or a checkpoint takes longer than mesh.timeout_s.
"""
from __future__ import annotations
import dataclasses, math, os, secrets, signal, sys, time
import numpy as np
from tqdm import tqdm
from .core import Tensor, jit, no_grad, precision
from .core import random as rng
from .checkpoint import CheckpointManager, load_hf_safetensors
from . import resume as resume_checks
from .nn.module import to_numpy_storage
from .mlperf_log import MLPerfLogger
from .tasks import make_task
from . import results as results_tree
from .build import build_replica, build_optimizer, build_schedule, flops_per_sample, no_decay_names
from .page_cache import drop_page_cache, HOW as DROP_HOW
from .parallel import Mesh
from .parallel.data_parallel import DataParallel
from .parallel.hosts import SingleHost
from .peak import mesh_peak
from .core.device import get_runtime, OutOfMemoryError

class Run:
  def __init__(self, cfg, log_path: str, results_root: str | None, resume: str | None = None, progress=True, hosts=None):
    self.hosts = hosts = hosts or SingleHost()
    self.cfg, self.progress, self.lead = cfg, progress, hosts.rank == 0
    self.ckpt = CheckpointManager(cfg.checkpoint.dir, keep=cfg.checkpoint.keep)
    self.resumed = self._find_checkpoint(resume)
    if self.resumed is not None: log_path = self.resumed.state["mlperf"]["log_path"]
    self.cfg = cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=hosts.bcast(self._seed(cfg))))
    self.log_path, self.results_root = log_path, results_root
    self.log = MLPerfLogger(cfg, log_path if self.lead else None)

  def _seed(self, cfg) -> int:
    """The run's seed: the recipe's, else the checkpoint's on a resume, else one drawn from the OS (as the reference
    does when none is given; MLPerf's package checker refuses runs that log the same seed from the same line)."""
    saved = self.resumed.state.get("seed") if self.resumed is not None else None
    if saved is not None and cfg.train.seed is not None and cfg.train.seed != saved:
      raise ValueError(f"checkpoint {self.resumed.path} was trained with seed {saved}, the run asks for {cfg.train.seed}: leave the seed out to continue it")
    if cfg.train.seed is not None: return cfg.train.seed
    return saved if saved is not None else secrets.randbelow(2**31)

  def _find_checkpoint(self, resume):
    """The checkpoint to continue from: host 0 picks it (the newest complete one for 'auto'), every host loads it."""
    if not resume: return None
    path = resume if resume != "auto" else self.hosts.bcast(getattr(self.ckpt.resume_auto(), "path", None) if self.lead else None)
    if path is None: return None
    ck = self.ckpt.load(path)
    resume_checks.check_record(ck, self.cfg)
    return ck

  # ---- setup ----
  def init(self):
    cfg = self.cfg
    if self.resumed is None:
      cleared = self.hosts.sum([self._drop_page_cache()])[0] == self.hosts.size   # every host dropped its cache
      self.log.init_start(bool(cleared)); self.log.hyperparameters()
    Tensor.manual_seed(cfg.train.seed)
    self.mesh = Mesh(cfg.mesh.dp, cfg.mesh.tp, cfg.mesh.device)
    # replica d runs on its tensor-parallel group (a single device when tp is 1)
    self.groups = [self.mesh.tp_group(d) if cfg.mesh.tp > 1 else self.mesh.device(d) for d in range(cfg.mesh.dp)]
    self.devices = self.mesh.dp_group(0)
    t0 = time.perf_counter()
    self.task = make_task(cfg, self.groups[0], dp_rank=self.hosts.rank, dp_size=self.hosts.size)
    self.models = [self.task.model] + [build_replica(cfg, g if isinstance(g, list) else [g]) for g in self.groups[1:]]
    if cfg.checkpoint.init_weights and self.resumed is None:   # e.g. published Llama 3.1 weights (Hugging Face layout)
      weights = load_hf_safetensors(cfg.checkpoint.init_weights)
      for m in self.models: m.load_state_dict(weights)
    p, no_decay = cfg.train.precision, no_decay_names(cfg, self.models[0])
    self.opt = DataParallel(self.models, lambda ps: build_optimizer(cfg, ps, no_decay), zero1=cfg.mesh.zero1, clip_norm=cfg.optimizer.grad_clip_norm,
                            comm_dtype=p.comm_dtype, master_dtype=p.param_dtype, hosts=self.hosts)
    self.build_seconds = time.perf_counter() - t0
    self.schedule = build_schedule(cfg)
    self.step_fn = jit(self._step)
    self.exposed_ms = []   # per step: milliseconds this host waited for the exchange across hosts (communication not hidden)
    self.eval_fn = jit(self._eval_step)
    self.step, self.samples, self.evals, self.block_open, self.precision_logged = 0, 0, [], False, False
    if self.resumed is not None: self._restore(self.resumed)
    self.hosts.barrier()   # every host is ready before the run starts
    if self.resumed is None: self.log.init_stop(); self.log.run_start()

  def _drop_page_cache(self) -> bool:
    """A benchmark run drops the page cache first (the rules); whether it did is what the log's cache_clear says.
    The smoke recipes leave it alone."""
    if self.cfg.benchmark != self.cfg.mlperf_benchmark: return False
    ok, why = drop_page_cache()
    if not ok: print(f"warning: could not drop the page cache{f' on host {self.hosts.rank}' if self.hosts.size > 1 else ''} ({why}), so the log says "
                     f"cache_clear: false; MLPerf requires it: {DROP_HOW}", file=sys.stderr)
    return ok

  def _step(self, xs, ys):
    """One optimizer step: micro-batch by micro-batch, every replica's forward and backward on its slice
    (each micro-batch run, and its activations freed, before the next starts; gradients summed in float32),
    then the update. Jitted: the whole step is one replay."""
    accum, mb = self.cfg.train.gradient_accumulation_steps, self.cfg.train.micro_batch_size
    self.opt.zero_grad(accumulate=accum > 1)
    losses = []
    for i in range(accum):
      micro = []
      for model, x, y in zip(self.models, xs, ys):
        li = self.task.loss(model, x[i * mb:(i + 1) * mb], y[i * mb:(i + 1) * mb]) * (1.0 / accum)
        li.backward()
        micro.append(li.to(self.devices[0]))
      self.opt.micro_batch_done(*micro)
      losses += micro
    self.opt.step()
    return sum(losses) * (1.0 / len(self.models))

  def _eval_step(self, xs, ys):
    """The summed loss of one evaluation batch, split over the data-parallel replicas (jitted)."""
    with no_grad():
      return sum(self.task.eval_loss(m, x, y).to(self.devices[0]) for m, x, y in zip(self.models, xs, ys))

  def evaluate(self) -> float:
    """The task's metric on its evaluation set, the batches split over the data-parallel replicas of every host."""
    mb, h = max(1, self.cfg.train.micro_batch_size), self.hosts
    local = mb * len(self.groups)
    total, count = 0.0, 0
    for m in self.models: m.eval()
    for i, (x, y, n) in enumerate(self.task.eval_batches(local * h.size)):
      x, y = x[h.rank * local:(h.rank + 1) * local], y[h.rank * local:(h.rank + 1) * local]   # this host's replicas' rows
      parts = [self.task.to_device(xp, yp, g) for xp, yp, g in zip(np.split(x, len(self.groups)), np.split(y, len(self.groups)), self.groups)]
      h.watch(f"evaluation batch {i + 1}", self._limit(self.eval_fn))
      total += self.eval_fn([p[0] for p in parts], [p[1] for p in parts]).item()
      h.arrived(f"evaluation batch {i + 1}")
      count += n
    for m in self.models: m.train()
    return float(h.sum([total])[0]) / max(count, 1)

  def _limit(self, fn) -> float:
    """The watchdog's limit for one call of a jitted step: 10x the recipe's while it still compiles and records."""
    return self.cfg.mesh.timeout_s * (10 if fn.calls < 2 else 1)

  # ---- checkpoints ----
  def _save(self):
    self.hosts.watch(f"the checkpoint at step {self.step}", self.cfg.mesh.timeout_s)
    # host 0 writes the model and what every host holds alike; each host its own optimizer shards (ZeRO-1)
    tensors = {f"model.{k}": to_numpy_storage(v) for k, v in self.task.model.state_dict().items()} if self.lead else {}
    tensors.update({f"optim.{k}": to_numpy_storage(v) for k, v in self.opt.state_dict().items() if self.lead or self.opt.zero1})
    state = {"step": self.step, "samples": self.samples, "evals": self.evals, "rng": rng.get_state(), "task": self.task.state_dict(),
             "seed": self.cfg.train.seed,
             "mlperf": {"log_path": self.log_path, "block_open": self.block_open, "block_first_epoch": self.log._block_first_epoch,
                        "precision_logged": self.precision_logged},
             "recipe": resume_checks.record(self.cfg), "layout": self.opt.layout()}
    self.ckpt.save(self.step, tensors, state, self.hosts)
    self.hosts.arrived(f"the checkpoint at step {self.step}")

  def _restore(self, ck):
    tensors, st = ck.all_tensors(), ck.state
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    with resume_checks.naming(ck.tensor_path() if ck.ranks is None else ck.path):
      resume_checks.check_layout(tensors, self.task.model.state_dict(), "model.")
      for m in self.models: m.load_state_dict(part("model."))   # every data-parallel replica
      layout = st.get("layout") or self.opt.layout()
      self.opt.load_state_dict(part("optim."), layout)          # reshards what another mesh of hosts x dp wrote
      if layout == self.opt.layout():
        resume_checks.check_layout({f"optim.{k}": v for k, v in self.opt.own(part("optim.")).items()}, self.opt.state_dict(), "optim.")
    self.step, self.samples, self.evals = st["step"], st["samples"], st["evals"]
    rng.set_state(st["rng"])
    self.task.load_state_dict(st["task"])
    self.block_open = st["mlperf"]["block_open"]
    self.precision_logged = st["mlperf"].get("precision_logged", True)
    self.log._block_first_epoch = st["mlperf"]["block_first_epoch"]

  # ---- evaluation schedule ----
  def _position(self):
    if self.cfg.family == "llama": return self.samples
    return self.samples // self.cfg.train.global_batch_size // self.cfg.steps_per_epoch

  def _eval_due(self) -> bool:
    e = self.cfg.eval
    if self.cfg.family == "llama": return self.samples % self.cfg.eval_every_samples == 0
    spe = self.cfg.steps_per_epoch
    if self.step % spe: return False
    epoch, first = self.step // spe, e.offset_epochs or e.interval_epochs
    return epoch >= first and (epoch - first) % e.interval_epochs == 0

  def _cap_reached(self) -> bool:
    t = self.cfg.train
    if t.max_samples is not None: return self.samples >= t.max_samples
    return self.step >= t.max_epochs * self.cfg.steps_per_epoch

  # ---- the run ----
  def train(self, max_steps: int | None = None, print_losses=False) -> bool:
    """Train until the target, the sample cap, or (for tests) step number max_steps. True on success."""
    cfg, gb = self.cfg, self.cfg.train.global_batch_size
    flops = flops_per_sample(cfg)
    peak = mesh_peak(cfg.mesh.device, get_runtime(self.devices[0]).device_name, cfg.mesh.dp * cfg.mesh.tp, cfg.train.precision.compute_dtype)
    peak = peak * self.hosts.size if peak else None
    self.mfu = None   # the last step's model FLOP utilisation, when the model's FLOPs and the devices' peak are known
    success, h = False, self.hosts
    bar = tqdm(total=(cfg.train.max_samples // gb) if cfg.train.max_samples else int(cfg.train.max_epochs * cfg.steps_per_epoch),
               initial=self.step, disable=not (self.progress and self.lead), unit="step", dynamic_ncols=True)
    t_last = time.perf_counter()
    while not self._cap_reached() and (max_steps is None or self.step < max_steps):
      if not self.block_open: self.log.block_start(self._position()); self.block_open = True
      x, y = self.task.next_batch()
      parts = [self.task.to_device(xp, yp, g) for xp, yp, g in zip(np.array_split(x, len(self.groups)), np.array_split(y, len(self.groups)), self.groups)]
      x, y = [p[0] for p in parts], [p[1] for p in parts]
      lr = self.schedule(self.step)
      self.opt.set_lr(lr)
      if not self.precision_logged: precision.clear()
      inject_fault(h.rank, self.step + 1)
      h.watch(f"step {self.step + 1}", self._limit(self.step_fn))
      exposed = h.exposed_s
      loss = self.step_fn(x, y).item()
      if h.size > 1: loss = float(h.sum([loss])[0]) / h.size   # the mean over every host's replicas
      h.arrived(f"step {self.step + 1}")
      self.exposed_ms.append(1e3 * (h.exposed_s - exposed))
      self.last_loss = loss
      if not math.isfinite(loss): raise FloatingPointError(f"loss became {loss} at step {self.step}")
      if not self.precision_logged:   # what the first step ran in (the same in every later one: one replay)
        ran = [precision.lowest(k) for k in precision.KINDS]   # a kind that did not run (a ResNet's attention): the compute type
        self.log.precision(*(d.name if d else cfg.train.precision.compute_dtype for d in ran)); self.precision_logged = True
      self.step += 1; self.samples += gb
      if print_losses and self.lead: print(f"step {self.step} loss {loss!r}", flush=True)
      now = time.perf_counter(); dt, t_last = now - t_last, now
      per_s = gb * self.task.tokens_per_sample / dt
      if flops and peak: self.mfu = flops * gb / dt / peak
      bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {per_s:,.0f} {'tok' if cfg.family == 'llama' else 'img'}/s"
                          + (f" MFU {self.mfu:.1%}" if self.mfu is not None else "")
                          + (f" comm exposed {self.exposed_ms[-1]:.0f} ms" if h.size > 1 else ""), refresh=False)
      bar.update(1)
      if self._eval_due():
        pos = self._position()
        self.log.block_stop(pos); self.block_open = False
        self.log.eval_start(pos)
        t_eval = time.perf_counter()
        value = self.evaluate()
        t_eval = time.perf_counter() - t_eval
        self.log.eval_stop(pos, value)
        self.evals.append((pos, value))
        bar.write(f"eval at {'sample' if cfg.family == 'llama' else 'epoch'} {pos}: {self.task.metric} {value:.4f} (target {cfg.eval.target}), {t_eval:.1f}s")
        t_last = time.perf_counter()
        if cfg.target_reached(value): success = True; break
      if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0: self._save()
    bar.close()
    self.success = success
    return success

  def finish(self):
    """run_stop, the result file and the system description (host 0). Returns the result file's path."""
    if self.block_open: self.log.block_stop(self._position()); self.block_open = False
    self.log.run_stop(self.success, self.samples)
    self.log.close()
    if hasattr(self.task.loader, "close"): self.task.loader.close()   # its worker processes, if any
    if self.cfg.checkpoint.every_steps: self._save()
    if self.results_root is None or not self.lead: return None
    return results_tree.record_run(self.cfg, self.log_path, self.results_root, results_tree.accelerators(self.cfg), nodes=self.hosts.size)


FAULT = "TRAINER_FAULT"   # tests only: "HOST:STEP:KIND", KIND raise | oom | kill | hang, before that step on that host


def inject_fault(host: int, step: int):
  """The test-only fault switch: make host `host` fail at step `step` as TRAINER_FAULT says."""
  spec = os.environ.get(FAULT)
  if not spec: return
  where, at, kind = spec.split(":")
  if (int(where), int(at)) != (host, step): return
  if kind == "raise": raise RuntimeError(f"injected fault at step {step}")
  if kind == "oom": raise OutOfMemoryError(f"CPU:{host}", 1 << 30, 0, what="an injected fault")
  if kind == "kill": os.kill(os.getpid(), signal.SIGKILL)
  if kind == "hang":
    while True: time.sleep(1)
  raise ValueError(f"{FAULT}: unknown kind {kind!r} (raise, oom, kill, hang)")
