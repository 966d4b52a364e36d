"""From a validated recipe to the objects the loop trains: model, optimizer, LR schedule, FLOP count.

Precision: the model is built in `compute_dtype` (the weights its matmuls and attention read); the
optimizer keeps master weights and moments in `param_dtype`. Recompute marks the model's blocks.
Every replica is initialised on its own devices from the counter-based generator, in the same order, so
replicas start equal; a tensor-parallel replica is built lazily on each device of its group and each
device computes only its own shards."""
from __future__ import annotations
from .nn.optim import AdamW, SGD, LARS
from .nn.schedule import WarmupCosine, WarmupPolynomial


def build_model(cfg, device: str):
  m, dtype = cfg.model, cfg.train.precision.compute_dtype
  if cfg.family == "llama":
    from .models.llama import Llama, LlamaConfig
    s = m.rope_scaling
    lc = LlamaConfig(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, ffn_dim=m.ffn_dim, vocab_size=m.vocab_size,
                     norm_eps=m.norm_eps, rope_theta=m.rope_theta, max_seq_len=m.max_seq_len, dtype=dtype,
                     rope_scaling_factor=s.factor if s else None, rope_low_freq_factor=s.low_freq_factor if s else 1.0,
                     rope_high_freq_factor=s.high_freq_factor if s else 4.0, rope_original_max_pos=s.original_max_position if s else m.max_seq_len)
    return Llama(lc, device=device)
  from .models.resnet import ResNet, ResNetConfig
  rc = ResNetConfig(layers=tuple(m.blocks), widths=tuple(m.widths), num_classes=m.num_classes, dtype=dtype, bn_span=m.bn_span,
                    **({} if m.variant == "resnet50" else {"stem_width": m.stem_width or m.widths[0], "expansion": m.expansion or 2}))
  return ResNet(rc, device=device)


def build_replica(cfg, devices: list[str]):
  """One model replica on a tensor-parallel group (one device without tensor parallelism)."""
  from .nn.module import deferred_init, recompute_blocks
  if len(devices) == 1: model = build_model(cfg, devices[0])
  else:
    from .parallel.tensor_parallel import shard_model, LLAMA_PLAN
    with deferred_init(): built = [build_model(cfg, d) for d in devices]
    model = shard_model(built[0], devices, LLAMA_PLAN, built)
  return recompute_blocks(model, cfg.train.recompute == "layer")


def no_decay_names(cfg, model) -> set[str]:
  """The parameters of `model` that get no weight decay: with optimizer.no_weight_decay bias_and_1d, biases and every 1-D
  parameter (norm weights), as Megatron-core's default parameter groups (megatron/core/optimizer/__init__.py
  _get_param_groups: no_wd = name.endswith('.bias') or len(param.shape) == 1)."""
  if cfg.optimizer.no_weight_decay == "none": return set()
  return {n for n, p in model.named_parameters() if n.endswith(".bias") or len(p.shape) == 1}


def build_optimizer(cfg, params, no_decay: set[str] = frozenset()):
  """The recipe's optimizer over `params`, (name, tensor) pairs; names in `no_decay` get no weight decay (AdamW)."""
  o, master = cfg.optimizer, cfg.train.precision.param_dtype
  if o.name == "adamw": return AdamW(params, o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, master_dtype=master,
                                     no_decay=lambda n, p: n in no_decay)
  if o.name == "sgd": return SGD(params, o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov, master_dtype=master)
  return LARS(params, o.lr, momentum=o.momentum, weight_decay=o.weight_decay, master_dtype=master)


def build_schedule(cfg):
  s, lr = cfg.schedule, cfg.optimizer.lr
  if s.kind == "cosine_warmup": return WarmupCosine(lr, s.warmup_steps, s.decay_steps, s.end_lr)
  return WarmupPolynomial(lr, round(s.warmup_epochs * cfg.steps_per_epoch), s.decay_steps, s.end_lr, s.power)


def flops_per_sample(cfg) -> float:
  """Model FLOPs of one training sample (forward + backward): 6 per parameter-token of the matrix
  products plus attention (12 * layers * dim * seq per token), as PaLM counts them; 0 if unknown."""
  if cfg.family != "llama": return 0.0
  m, T = cfg.model, cfg.data.seq_len
  hd = m.dim // m.n_heads
  matrix = m.n_layers * (m.dim * hd * (2 * m.n_heads + 2 * m.n_kv_heads) + 3 * m.dim * m.ffn_dim) + m.vocab_size * m.dim
  return (6 * matrix + 12 * m.n_layers * m.dim * T) * T
