"""What more hosts would buy: the bytes a host sends to the others per step, and a projection of step time and time
to train for 1, 2, 4, 8 and 16 hosts of the recipe's devices (the dry run prints it when the recipe has mesh.hosts).

The model is deliberately simple, so that every assumption is visible:
  - compute: the global batch is fixed, so H hosts each do 1/H of one host's step: t_compute(H) = t_1 / H, where
    t_1 is the one-host step time the user measured (--step-time), else the step's FLOPs over the devices' dense
    peak (trainer/peak.py, by mlperf.submission_platform; the CPU's own) at an assumed MFU;
  - communication (alpha-beta, hierarchical as across_hosts.py runs it): each of a host's devices exchanges its
    1/N chunk of every gradient with its peers on the other hosts: with a ring all-reduce 2 (H - 1) / H of the
    gradient bytes leave each host, with ZeRO-1 (H - 1) / H of them (reduce-scatter) and of the weights
    (all-gather); at mesh.network_gbps per host (beta), plus ALPHA_S per message for 2 (H - 1) messages per
    parameter tensor and device, one device after the other (alpha); none of it overlaps the compute (an upper
    bound: the exchanges overlap each other, not backward);
  - time to train: the steps the recipe caps the run at (train.max_samples / global batch, or max_epochs), an upper
    bound for a run that converges sooner.
"""
from __future__ import annotations
from .plan import SIZE, param_count
from .peak import gpu_peak, cpu_peak

ALPHA_S = 5e-6            # seconds per message between hosts (InfiniBand-class; TCP is 5-10x more)
DEFAULT_MFU = 0.40        # the model FLOP utilisation assumed for the compute when no step time is given
HOSTS = (1, 2, 4, 8, 16)


def bytes_across(cfg, hosts: int) -> float:
  """Bytes one host sends to the others per step: the gradients in comm_dtype (ZeRO-1: their reduce-scatter and the
  updated weights' all-gather in compute_dtype)."""
  if hosts <= 1: return 0.0
  p, n, frac = cfg.train.precision, param_count(cfg), (hosts - 1) / hosts
  if cfg.mesh.zero1: return frac * n * (SIZE[p.comm_dtype] + SIZE[p.compute_dtype])
  return 2 * frac * n * SIZE[p.comm_dtype]


def tensor_count(cfg) -> int:
  """Parameter tensors of the model (each is one exchange per device)."""
  if cfg.family == "llama": return 9 * cfg.model.n_layers + 3   # q, k, v, o, gate, up, down, two norms; embedding, head, norm
  from .build import build_model
  return len(build_model(cfg, "CPU:0").parameters())


def one_host_step(cfg, step_time: float | None, mfu: float) -> tuple[float | None, str]:
  """The one-host step time, and where it comes from."""
  if step_time: return step_time, f"{step_time:.3f} s, measured (--step-time)"
  from .build import flops_per_sample
  flops = flops_per_sample(cfg) * cfg.train.global_batch_size
  cpu = cfg.mesh.device == "CPU"
  peak = cpu_peak() if cpu else gpu_peak(cfg.mlperf.submission_platform, cfg.train.precision.compute_dtype)
  if not flops or not peak: return None, "unknown: no FLOP count or device peak for this recipe (give --step-time)"
  peak = peak if cpu else peak * cfg.mesh.dp * cfg.mesh.tp
  return flops / (peak * mfu), f"{flops / 1e12:,.1f} TFLOP a step at {mfu:.0%} of the {peak / 1e12:,.0f} TFLOP/s dense peak (assumed)"


def comm_seconds(cfg, hosts: int) -> float:
  """The exchange's time per step on `hosts` hosts (alpha-beta, module docstring)."""
  if hosts <= 1: return 0.0
  # a ring all-reduce, or ZeRO-1's reduce-scatter and all-gather: 2 (H - 1) messages per tensor and device
  latency = ALPHA_S * 2 * (hosts - 1) * tensor_count(cfg) * cfg.mesh.dp * cfg.mesh.tp
  return latency + bytes_across(cfg, hosts) * 8 / (cfg.mesh.network_gbps * 1e9)


def projection(cfg, step_time: float | None = None, mfu: float = DEFAULT_MFU) -> list[str]:
  """The dry run's lines: bytes across hosts per step, and step time and time to train for 1-16 hosts."""
  t1, source = one_host_step(cfg, step_time, mfu)
  steps = cfg.train.max_samples // cfg.train.global_batch_size if cfg.train.max_samples else int(cfg.train.max_epochs * cfg.steps_per_epoch)
  out = [f"hosts: each host sends {bytes_across(cfg, cfg.mesh.hosts) / 2**30:,.2f} GiB to the others per step at mesh.hosts={cfg.mesh.hosts} "
         f"({'ZeRO-1 reduce-scatter and all-gather' if cfg.mesh.zero1 else 'hierarchical all-reduce'}); projection at "
         f"{cfg.mesh.network_gbps:g} Gb/s per host, {ALPHA_S * 1e6:g} us a message, the global batch fixed, nothing overlapped, "
         f"one host's step {source}, {steps:,} steps (the recipe's cap):"]
  for h in HOSTS:
    comm = comm_seconds(cfg, h)
    if t1 is None:
      out.append(f"  {h:3d} hosts: {bytes_across(cfg, h) / 2**30:8,.2f} GiB out per host per step, exchange {comm * 1e3:9,.1f} ms")
      continue
    step = t1 / h + comm
    out.append(f"  {h:3d} hosts: {bytes_across(cfg, h) / 2**30:8,.2f} GiB out per host per step, exchange {comm * 1e3:9,.1f} ms, "
               f"step {step:8.3f} s, time to train {step * steps / 3600:8,.2f} h, speed-up {t1 / step:5.2f}x")
  return out
