"""The memory plan of a training step: what each device holds at the step's peak, from a model of the step.

The step (loop.Run._step) runs micro-batch by micro-batch: forward (activations saved for backward, or
with recompute only each block's input), the logits and their gradient, backward (activations freed
layer by layer as the weight gradients appear), then the optimizer (parameter by parameter: the gradient's
all-reduce, or under ZeRO-1 its reduce-scatter and the all-gather of the updated weights). The plan adds, per device:
  weights       the parameters in compute_dtype (tensor-parallel ones split over tp)
  optimizer     master weights and moments in param_dtype (split over dp under ZeRO-1)
  gradients     in compute_dtype, or float32 sums when accumulating micro-batches
  activations   what backward keeps per layer, per token (the SAVED_* counts below, read off the buffers
                the scheduler keeps for this model)
  logits        the output layer's logits and their gradient (vocabulary split over tp)
  collectives   one parameter's gradient as it travels and its reduced result (ZeRO-1: gathered weights)
and takes the largest of the three moments at which the step peaks: the start of backward (every
activation, the logits, earlier micro-batches' gradient sums), the end of backward (every gradient), and
the optimizer (gradients with the collectives' buffers). It is checked against measured peaks on the CPU
in CI and on GPUs by bench/llama_step.py (bench/RESULTS.md).
"""
from __future__ import annotations
from dataclasses import dataclass

GiB = 2 ** 30
SIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
# What backward keeps of one Llama layer, per token, counted in tensors of each width (compute dtype), for the
# two attention paths: the buffers alive at the peak of the step on the CPU (bench/activation_census.py; the fused
# path through its numpy references). Before commit 9b841a6 the census gave what an H200's measured slope gave;
# these counts, for the scheduler since then, have not been measured on a GPU yet.
#   dim: the two residual sums and the two normed inputs (whole on every tensor-parallel device); qdim: q after
#   rotary, the attention output in the heads' layout and in the tokens' (the fused kernel's backward reads the
#   first, the output projection's weight gradient the second; the composed path keeps only the second); ffn:
#   gate, up and their product; kv: k after rotary and v (qdim, ffn and kv split over tp); heads: the softmax
#   statistics and keys: the probabilities (composed attention only).
SAVED_FUSED = {"dim": 4, "qdim": 3, "ffn": 3, "kv": 2}
SAVED_COMPOSED = {"dim": 4, "qdim": 2, "ffn": 3, "kv": 2, "heads": 2, "keys": 2}
STATS_F32 = 4    # float32 per-token statistics of a layer's two norms
HEAD_SAVED = 3   # dim-wide tensors outside the layers: the embedding's output, the final norm's input and output
HEADROOM = 0.95   # a plan fits when it needs at most this share of a device: measured peaks came within 5% of it
# Device memory by the names devices report (GiB that a process can allocate).
CAPACITY_GIB = {"H200": 139.0, "H100": 79.6, "MI300X": 192.0, "MI350X": 288.0}


@dataclass
class MemoryPlan:
  parts: dict           # name -> bytes at the peak
  peak: float           # bytes per device
  phase: str            # which moment of the step peaks
  capacity: float | None = None
  capacity_from: str = ""

  @property
  def fits(self) -> bool: return self.capacity is None or self.peak <= HEADROOM * self.capacity

  def lines(self) -> list[str]:
    cap = f" of {self.capacity / GiB:,.1f} GiB ({self.capacity_from})" if self.capacity else " (device capacity unknown)"
    out = [f"memory per device at the step's peak ({self.phase}): {self.peak / GiB:,.2f} GiB{cap}"]
    out += [f"  {k:12s} {v / GiB:10,.2f} GiB" for k, v in self.parts.items() if v]
    return out


def param_count(cfg) -> int:
  m = cfg.model
  if cfg.family == "llama":
    hd = m.dim // m.n_heads
    per_layer = m.dim * hd * (2 * m.n_heads + 2 * m.n_kv_heads) + 3 * m.dim * m.ffn_dim + 2 * m.dim
    return 2 * m.vocab_size * m.dim + m.n_layers * per_layer + m.dim
  from .build import build_model
  return sum(p.numel() for p in build_model(cfg, "CPU:0").parameters())   # a ResNet is small enough to build


def _params_per_device(cfg) -> tuple[float, float]:
  """(parameters a device holds, the largest single parameter), split ones divided over tp."""
  n, tp = param_count(cfg), cfg.mesh.tp
  if cfg.family != "llama": return n, n
  m = cfg.model
  replicated = m.n_layers * 2 * m.dim + m.dim          # the norms' weights
  largest = m.vocab_size * m.dim / tp
  return (n - replicated) / tp + replicated, largest


def fused_attention(cfg) -> bool:
  """Whether the step's attention runs as the fused kernel (core/kernels/attention.py covers: the CPU's any float
  type, CUDA's bf16/fp16 with head dim 64 or 128)."""
  m = cfg.model
  if cfg.mesh.device == "CPU": return True
  return cfg.mesh.device == "CUDA" and cfg.train.precision.compute_dtype != "float32" and m.dim // m.n_heads in (64, 128)


def activation_bytes_per_token(cfg) -> float:
  """What backward keeps of one layer per token of a micro-batch (on one device)."""
  m, c, tp = cfg.model, SIZE[cfg.train.precision.compute_dtype], cfg.mesh.tp
  hd = m.dim // m.n_heads
  saved = SAVED_FUSED if fused_attention(cfg) else SAVED_COMPOSED
  width = {"dim": m.dim, "qdim": m.n_heads * hd / tp, "ffn": m.ffn_dim / tp, "kv": m.n_kv_heads * hd / tp}
  b = sum(saved[k] * width[k] * c for k in width) + STATS_F32 * 4
  if fused_attention(cfg): b += m.n_heads / tp * 4                                  # log-sum-exp
  else: b += (saved["heads"] * m.n_heads + saved["keys"] * m.n_heads * cfg.data.seq_len) / tp * c
  return b


def plan_memory(cfg) -> MemoryPlan:
  """The per-device peak of one training step of `cfg` (a validated llama or resnet Config)."""
  t, p, mesh = cfg.train, cfg.train.precision, cfg.mesh
  c, pw, comm = SIZE[p.compute_dtype], SIZE[p.param_dtype], SIZE[p.comm_dtype]
  n, largest = _params_per_device(cfg)
  zero1 = mesh.zero1 and mesh.replicas > 1    # ZeRO-1 over a single replica is plain data parallelism
  z = mesh.replicas if zero1 else 1           # the optimizer state is sharded over every host's replicas
  moments = 2 if cfg.optimizer.name == "adamw" else 1
  accum = t.gradient_accumulation_steps > 1
  weights = n * c
  master = n * pw / z if (pw > c or zero1) else 0
  optimizer = master + moments * n * pw / z
  grads = n * 4 if accum else n * c
  if cfg.family != "llama":   # a ResNet: its activations are not modelled; weights, state and gradients only
    parts = {"weights": weights, "optimizer": optimizer, "gradients": grads}
    return MemoryPlan(parts, sum(parts.values()), "end of backward")
  m = cfg.model
  tokens = t.micro_batch_size * cfg.data.seq_len
  layer = activation_bytes_per_token(cfg) * tokens
  keep = tokens * m.dim * c                                              # a block's input (recompute)
  acts = m.n_layers * (keep if t.recompute == "layer" else layer) + (layer if t.recompute == "layer" else 0)
  logits = tokens * m.vocab_size / mesh.tp * c * 2 + tokens * 4 * 4      # logits, their gradient, row statistics
  head = HEAD_SAVED * tokens * m.dim * c                                  # the embedding's output, the final norm's input and output
  # one parameter at a time: its gradient in comm_dtype and the reduced result (ZeRO-1: the reduce-scattered
  # chunk, then the all-gathered weights)
  coll = largest * (comm + c) if zero1 else (2 * largest * max(comm, c) if mesh.dp > 1 else 0)
  phases = {
    "start of backward": {"activations": acts + head, "logits": logits, "gradients": grads if accum else largest * c},
    "end of backward": {"gradients": grads, "activations": keep if t.recompute == "layer" else layer},
    "optimizer": {"gradients": grads, "collectives": coll},
  }
  phase = max(phases, key=lambda k: sum(phases[k].values()))
  parts = {"weights": weights, "optimizer": optimizer, **phases[phase]}
  return MemoryPlan(parts, sum(parts.values()), phase)


def device_capacity(cfg) -> tuple[float | None, str]:
  """Bytes one device of the mesh can allocate, and where the figure comes from: the runtime when the device
  is here, else the device named in the recipe's mlperf.submission_platform (H200, H100, MI300X, MI350X)."""
  backend = cfg.mesh.device
  if backend == "CPU":
    try:
      with open("/proc/meminfo") as f: info = dict(line.split(":", 1) for line in f)
      return int(info["MemAvailable"].split()[0]) * 1024 / (cfg.mesh.dp * cfg.mesh.tp), "host memory shared by the CPU devices"
    except (OSError, KeyError, ValueError): return None, ""
  try:
    from .core.device import get_runtime, device_count
    if device_count(backend) > 0:
      rt = get_runtime(f"{backend}:0")
      if hasattr(rt, "memory_capacity"): return rt.memory_capacity(), getattr(rt, "device_name", backend)
  except Exception: pass
  platform = cfg.mlperf.submission_platform.upper()
  for name, gib in CAPACITY_GIB.items():
    if name in platform: return gib * GiB, f"{name}, from mlperf.submission_platform"
  return None, ""


def with_capacity(cfg, plan: MemoryPlan) -> MemoryPlan:
  plan.capacity, plan.capacity_from = device_capacity(cfg)
  return plan


def _changes(cfg):
  """(option, changed Config) for each single change that lowers the step's memory, in the order to try them."""
  import dataclasses
  from .config import resolve_train
  t, mesh = cfg.train, cfg.mesh
  if cfg.family == "llama" and t.recompute == "none":
    yield "--set train.recompute=layer", dataclasses.replace(cfg, train=dataclasses.replace(t, recompute="layer"))
  if t.micro_batch_size > 1:
    mb = t.micro_batch_size // 2
    try: yield f"--set train.micro_batch_size={mb}", dataclasses.replace(cfg, train=resolve_train(dataclasses.replace(t, micro_batch_size=mb, gradient_accumulation_steps=None), mesh))
    except Exception: pass
  if mesh.dp > 1 and not mesh.zero1 and mesh.tp == 1:
    yield "--set mesh.zero1=true", dataclasses.replace(cfg, mesh=dataclasses.replace(mesh, zero1=True))
  if cfg.family == "llama" and cfg.model.n_kv_heads % (mesh.tp * 2) == 0 and mesh.dp % 2 == 0:
    tr = resolve_train(dataclasses.replace(t, micro_batch_size=t.micro_batch_size * 2, gradient_accumulation_steps=None), dataclasses.replace(mesh, dp=mesh.dp // 2)) \
      if t.global_batch_size % (t.micro_batch_size * mesh.dp) == 0 else t
    yield (f"--set mesh.tp={mesh.tp * 2} --set mesh.dp={mesh.dp // 2}",
           dataclasses.replace(cfg, train=tr, mesh=dataclasses.replace(mesh, tp=mesh.tp * 2, dp=mesh.dp // 2, zero1=False)))


def refusal(cfg, plan: MemoryPlan) -> str:
  """The one line that refuses a step which does not fit: the plan's figure and the change that would fit
  (one option, or else the options applied one after another until the plan fits)."""
  cap = HEADROOM * plan.capacity
  head = (f"the step needs {plan.peak / GiB:,.1f} GiB per device, more than {HEADROOM:.0%} of the {plan.capacity / GiB:,.1f} GiB of "
          f"{plan.capacity_from}")
  fit = [(name, plan_memory(alt).peak) for name, alt in _changes(cfg) if plan_memory(alt).peak <= cap]
  if fit: return head + ": try " + " or ".join(f"{n} ({b / GiB:,.1f} GiB)" for n, b in fit)
  names, cur = [], cfg
  for _ in range(8):   # greedy: the change that lowers the plan most, until it fits
    best = min(_changes(cur), key=lambda c: plan_memory(c[1]).peak, default=None)
    if best is None or plan_memory(best[1]).peak >= plan_memory(cur).peak: break
    names.append(best[0]); cur = best[1]
    if plan_memory(cur).peak <= cap:
      return head + f": try {' '.join(names)} ({plan_memory(cur).peak / GiB:,.1f} GiB)"
  return head + ": no change of micro-batch, recompute, zero1 or tp fits it on this mesh; use more devices"
