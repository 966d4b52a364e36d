"""Recipes: a YAML file read into typed, frozen config objects, checked before any work starts.

`load_config(path, overrides)` reads the YAML, applies `--set key.sub=value` overrides (each value
read as a YAML scalar), builds the dataclasses below, fills in derived values and checks them.
Every problem is raised as one `ConfigError` whose message is a single line.

Schema (`*` marks a required key; floats may be written 1e-5 or 1.0e-5):

  benchmark*   llama31_8b | resnet | llama_tiny | resnet_tiny  (the tiny ones are not MLPerf
               benchmarks but use the same loop and logging)
  model*       name* llama: dim*, n_layers*, n_heads*, n_kv_heads*, ffn_dim*, vocab_size*,
                 max_seq_len*, rope_theta (500000), norm_eps (1e-5), rope_scaling (absent:
                 plain RoPE) with factor (8), low_freq_factor (1), high_freq_factor (4),
                 original_max_position (8192)
               name* resnet: variant* (resnet50: bottleneck blocks 3-4-6-3, widths 64..512;
                 tiny: bottleneck blocks, `blocks` and `widths` required, stem_width (widths[0]) and
                 expansion (2) optional), num_classes*, bn_span
                 (batch norm statistics over groups of this many samples, MLPerf's model_bn_span;
                 must divide train.micro_batch_size; absent: the whole micro-batch)
  data*        kind* c4: path*, seq_len*, train_prefixes (c4-train.en_6_text_document),
                 validation_prefix (c4-validation-91205-samples.en_text_document)
               kind* bytes: seq_len*, cache_dir (absent: the data layer's default)
               kind* synthetic_tokens: seq_len*
               kind* imagenet: path*, image_size (224), workers (0)
               kind* synthetic_images: image_size*, train_samples*, workers (0)
                 workers: processes that prepare image batches ahead of the step (decode, crop,
                 flip); 0 prepares them on the training process, between steps
  optimizer*   name* adamw|sgd|lars, lr*, betas (0.9, 0.999), eps (1e-8), weight_decay (0),
               no_weight_decay none|bias_and_1d (none: every parameter decays; bias_and_1d: biases
               and 1-D parameters such as norm weights do not, Megatron-core's default groups),
               momentum (0.9), nesterov (false), grad_clip_norm (absent: no clipping),
               label_smoothing (0)
  schedule*    kind* cosine_warmup: max_steps*, end_lr (required, but for llama31_8b where it is
                 0.1 x optimizer.lr when absent, as the rules tie it), and exactly one of
                 warmup_samples / warmup_steps (samples are turned into steps: ceil(samples /
                 global batch)); decays over max_steps - warmup_steps
               kind* poly_warmup (resnet only): warmup_epochs*, end_lr*, power (2), and exactly
                 one of decay_steps / decay_epochs: the decay's length after the warmup, as the
                 reference's lars_opt_learning_rate_decay_steps (epochs are turned into steps)
  train*       global_batch_size*, micro_batch_size*, gradient_accumulation_steps (absent:
               derived so that global = micro * mesh.hosts * mesh.dp * accumulation; present: must satisfy
               it), seed (absent: drawn from the OS at the start of a run, logged, and kept by a
               resume), exactly one of max_samples / max_epochs (a cap on the run),
               precision with param_dtype (master weights and optimizer state), compute_dtype
               (the weights and activations matmuls and attention read; no wider than
               param_dtype), comm_dtype (gradients as they travel) (float32|bfloat16|float16,
               all float32 by default), recompute none|layer (none: keep every activation for
               backward; layer: keep each transformer or residual block's input only and
               recompute its forward in backward)
  eval*        samples*, target*, interval_samples (llama, required; evaluations happen every
               ceil(interval_samples / global batch) x global batch samples, as the llama31_8b
               rules say) or interval_epochs
               (resnet, required) with offset_epochs (epochs trained before the first
               evaluation; 0, the default, means interval_epochs). Quality: llama log
               perplexity <= target, resnet top-1 >= target.
  mesh         hosts (1: hosts of one MPI job, one process each), dp (1: data-parallel replicas per host),
               tp (1: devices per replica, inside a host), zero1 (false: optimizer state sharded over all
               hosts x dp replicas), device CPU|CUDA|AMD (CPU), timeout_s (300: a step, evaluation or
               checkpoint that takes longer on several hosts ends the job), network_gbps (400: each host's
               network bandwidth in Gb/s, for the dry run's projection)
  checkpoint   dir (checkpoints), every_steps (absent: never), keep (2), init_weights (a folder of
               Hugging Face safetensors, e.g. published Llama 3.1 weights, loaded before step 0)
  mlperf*      submission_org*, submission_platform*, division* closed|open,
               status* onprem|cloud|research, system* (file-name safe)

In the closed division the MLPerf benchmarks must keep the values the rules fix (sequence length,
AdamW settings, schedule, step count, eval size and target for llama31_8b; LARS/SGD poly schedule
and target for resnet), so a recipe that would produce a non-compliant log fails at load.
"""

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import yaml

Dtype = Literal["float32", "bfloat16", "float16"]

LLAMA_BENCHMARKS = ("llama31_8b", "llama_tiny")
RESNET_BENCHMARKS = ("resnet", "resnet_tiny")
IMAGENET_TRAIN_IMAGES = 1281167
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)


class ConfigError(Exception):
    """A recipe problem, described in one line."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class LlamaModel:
    name: Literal["llama"]
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScaling] = None
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class ResNetModel:
    name: Literal["resnet"]
    variant: Literal["resnet50", "tiny"]
    num_classes: int
    blocks: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()
    bn_span: Optional[int] = None
    stem_width: Optional[int] = None
    expansion: Optional[int] = None


@dataclass(frozen=True)
class C4Data:
    kind: Literal["c4"]
    path: str
    seq_len: int
    train_prefixes: tuple[str, ...] = ("c4-train.en_6_text_document",)
    validation_prefix: str = "c4-validation-91205-samples.en_text_document"


@dataclass(frozen=True)
class BytesData:
    kind: Literal["bytes"]
    seq_len: int
    cache_dir: Optional[str] = None


@dataclass(frozen=True)
class SyntheticTokenData:
    kind: Literal["synthetic_tokens"]
    seq_len: int


@dataclass(frozen=True)
class ImageNetData:
    kind: Literal["imagenet"]
    path: str
    image_size: int = 224
    workers: int = 0

    @property
    def train_size(self):
        """Images in <path>/train when the folder exists (e.g. a generated set), else ImageNet's count."""
        folder = os.path.join(self.path, "train")
        if not os.path.isdir(folder):
            return IMAGENET_TRAIN_IMAGES
        return sum(1 for _, _, files in os.walk(folder) for f in files if f.lower().endswith((".jpeg", ".jpg")))


@dataclass(frozen=True)
class SyntheticImageData:
    kind: Literal["synthetic_images"]
    image_size: int
    train_samples: int
    workers: int = 0

    @property
    def train_size(self):
        return self.train_samples


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adamw", "sgd", "lars"]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    no_weight_decay: Literal["none", "bias_and_1d"] = "none"
    momentum: float = 0.9
    nesterov: bool = False
    grad_clip_norm: Optional[float] = None
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class CosineWarmup:
    kind: Literal["cosine_warmup"]
    max_steps: int
    end_lr: Optional[float] = None
    warmup_samples: Optional[int] = None
    warmup_steps: Optional[int] = None

    @property
    def decay_steps(self):
        return self.max_steps - self.warmup_steps


@dataclass(frozen=True)
class PolyWarmup:
    kind: Literal["poly_warmup"]
    warmup_epochs: float
    end_lr: float
    power: float = 2.0
    decay_steps: Optional[int] = None
    decay_epochs: Optional[float] = None


@dataclass(frozen=True)
class Precision:
    param_dtype: Dtype = "float32"
    compute_dtype: Dtype = "float32"
    comm_dtype: Dtype = "float32"


@dataclass(frozen=True)
class TrainConfig:
    global_batch_size: int
    micro_batch_size: int
    gradient_accumulation_steps: Optional[int] = None
    seed: Optional[int] = None
    max_samples: Optional[int] = None
    max_epochs: Optional[float] = None
    precision: Precision = Precision()
    recompute: Literal["none", "layer"] = "none"


@dataclass(frozen=True)
class EvalConfig:
    samples: int
    target: float
    interval_samples: Optional[int] = None
    interval_epochs: Optional[int] = None
    offset_epochs: int = 0


@dataclass(frozen=True)
class MeshConfig:
    hosts: int = 1
    dp: int = 1
    tp: int = 1
    zero1: bool = False
    device: Literal["CPU", "CUDA", "AMD"] = "CPU"
    timeout_s: float = 300.0
    network_gbps: float = 400.0

    @property
    def replicas(self):
        """Data-parallel replicas over all hosts."""
        return self.hosts * self.dp


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = "checkpoints"
    every_steps: Optional[int] = None
    keep: int = 2
    init_weights: Optional[str] = None


@dataclass(frozen=True)
class MLPerfConfig:
    submission_org: str
    submission_platform: str
    division: Literal["closed", "open"]
    status: Literal["onprem", "cloud", "research"]
    system: str


@dataclass(frozen=True)
class Config:
    benchmark: Literal["llama31_8b", "resnet", "llama_tiny", "resnet_tiny"]
    model: Union[LlamaModel, ResNetModel]
    data: Union[C4Data, BytesData, SyntheticTokenData, ImageNetData, SyntheticImageData]
    optimizer: OptimizerConfig
    schedule: Union[CosineWarmup, PolyWarmup]
    train: TrainConfig
    eval: EvalConfig
    mlperf: MLPerfConfig
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    recipe: str = field(default="", metadata={"derived": True})

    @property
    def family(self):
        """'llama' or 'resnet': which model, loop and metric the benchmark uses."""
        return "llama" if self.benchmark in LLAMA_BENCHMARKS else "resnet"

    @property
    def mlperf_benchmark(self):
        """The MLPerf benchmark name logged as submission_benchmark."""
        return "llama31_8b" if self.family == "llama" else "resnet"

    @property
    def steps_per_epoch(self):
        """Optimizer steps in one pass over an image training set (the loader drops a partial last batch)."""
        return max(1, self.data.train_size // self.train.global_batch_size)

    @property
    def eval_every_samples(self):
        """Samples between llama evaluations: eval.interval_samples rounded up to whole global batches (the llama31_8b
        rules: every ceil(12288 / global_batch_size) * global_batch_size samples)."""
        gb = self.train.global_batch_size
        return -(-self.eval.interval_samples // gb) * gb

    def target_reached(self, value):
        """Whether an evaluation result meets eval.target (log perplexity: lower is better)."""
        return value <= self.eval.target if self.family == "llama" else value >= self.eval.target


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-5), as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_config(path, overrides=()):
    """Read the recipe at `path` (recipe_file.py refuses what is not one), apply `key.sub=value` overrides,
    build and check a Config."""
    from .recipe_file import read_recipe
    return parse_config(read_recipe(path, _Loader), path, overrides)


def parse_config(raw, recipe="", overrides=()):
    """Build and check a Config from an already parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {recipe} must be a YAML mapping of sections")
    raw = apply_overrides(raw, overrides)
    cfg = _build(Config, raw, "")
    cfg = dataclasses.replace(cfg, recipe=recipe)
    cfg = _resolve(cfg)
    _validate(cfg)
    return cfg


def apply_overrides(raw, overrides):
    """A copy of `raw` with each 'a.b.c=value' set; the value is read as a YAML scalar."""
    raw = _copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': value is not a YAML scalar") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[:depth + 1])}' is not a section")
        node[parts[-1]] = value
    return raw


def validate_mesh(cfg, n_devices_available):
    """Check that this host can run its part of cfg's mesh and that the batch splits over it."""
    mesh = cfg.mesh
    need = mesh.dp * mesh.tp
    if need > n_devices_available:
        raise ConfigError(
            f"mesh dp={mesh.dp} x tp={mesh.tp} needs {need} {mesh.device} devices{' on each host' if mesh.hosts > 1 else ''}, "
            f"but only {n_devices_available} are available")
    _check_batch_split(cfg.train, mesh)


def _copy(node):
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


# ----- building dataclasses from YAML -----

def _join(where, key):
    return f"{where}.{key}" if where else str(key)


def _build(cls, data, where):
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a section (a mapping), got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
    for key in data:
        if key not in fields:
            _unknown_key(key, list(fields), where)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{_join(where, name)}'")
    return cls(**values)


def _unknown_key(key, known, where):
    place = where or "recipe"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known keys: {', '.join(known)})"
    raise ConfigError(f"unknown key '{key}' in {place}{hint}")


def _convert(tp, value, path):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        if len(members) == 1:
            return _convert(members[0], value, path)
        return _build_tagged(members, value, path)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"'{path}' must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        return _convert_tuple(args, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"'{path}' must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"config schema has an unsupported type at {path}: {tp}")


def _convert_tuple(args, value, path):
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"'{path}' must be a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"'{path}' must be a list of {len(args)} values, got {value!r}")
    return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _build_tagged(members, value, path):
    """Build the member of a union of dataclasses chosen by their shared first (Literal) field."""
    tag = dataclasses.fields(members[0])[0].name
    by_tag = {typing.get_args(typing.get_type_hints(m)[tag])[0]: m for m in members}
    if not isinstance(value, dict):
        raise ConfigError(f"'{path}' must be a section (a mapping), got {value!r}")
    if tag not in value:
        raise ConfigError(f"missing required key '{path}.{tag}' (one of {', '.join(by_tag)})")
    if value[tag] not in by_tag:
        choices = ", ".join(repr(t) for t in by_tag)
        raise ConfigError(f"'{path}.{tag}' must be one of {choices}, got {value[tag]!r}")
    return _build(by_tag[value[tag]], value, path)


# ----- derived values -----

def _resolve(cfg):
    """Fill in values a recipe may leave out: accumulation, warmup/decay steps, resnet shape."""
    cfg = dataclasses.replace(cfg, train=resolve_train(cfg.train, cfg.mesh))
    cfg = dataclasses.replace(cfg, schedule=_resolve_schedule(cfg))
    if isinstance(cfg.model, ResNetModel) and cfg.model.variant == "resnet50":
        model = cfg.model
        _require((model.blocks or RESNET50_BLOCKS) == RESNET50_BLOCKS
                 and (model.widths or RESNET50_WIDTHS) == RESNET50_WIDTHS and model.stem_width is None and model.expansion is None,
                 "model.blocks/widths/stem_width/expansion are fixed for resnet50; leave them out or use variant: tiny")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            model, blocks=RESNET50_BLOCKS, widths=RESNET50_WIDTHS))
    return cfg


def resolve_train(train, mesh):
    """train with gradient_accumulation_steps derived from (and checked against) the batch sizes and mesh."""
    _positive("train.global_batch_size", train.global_batch_size)
    _positive("train.micro_batch_size", train.micro_batch_size)
    _positive("mesh.dp", mesh.dp)
    _positive("mesh.hosts", mesh.hosts)
    _check_batch_split(train, mesh)
    derived = train.global_batch_size // (train.micro_batch_size * mesh.replicas)
    given = train.gradient_accumulation_steps
    hosts = f"mesh.hosts * " if mesh.hosts > 1 else ""
    _require(given is None or given == derived,
             f"train.global_batch_size ({train.global_batch_size}) must equal micro_batch_size * {hosts}"
             f"mesh.dp * gradient_accumulation_steps ({train.micro_batch_size} * {f'{mesh.hosts} * ' if hosts else ''}{mesh.dp} * {given})")
    return dataclasses.replace(train, gradient_accumulation_steps=derived)


def _check_batch_split(train, mesh):
    per_step = train.micro_batch_size * mesh.replicas
    hosts = f"mesh.hosts * " if mesh.hosts > 1 else ""
    _require(train.global_batch_size % per_step == 0,
             f"train.global_batch_size ({train.global_batch_size}) is not divisible by "
             f"{hosts}mesh.dp * train.micro_batch_size ({f'{mesh.hosts} * ' if hosts else ''}{mesh.dp} * {train.micro_batch_size} = {per_step})")


def _resolve_schedule(cfg):
    sched = cfg.schedule
    if isinstance(sched, CosineWarmup):
        if sched.end_lr is None:
            # the llama31_8b rules tie the end LR to 0.1 x the base LR (the reference's min_lr)
            _require(cfg.benchmark == "llama31_8b", "missing required key 'schedule.end_lr'")
            sched = dataclasses.replace(sched, end_lr=END_LR_FRACTION * cfg.optimizer.lr)
        _exactly_one("schedule", warmup_samples=sched.warmup_samples, warmup_steps=sched.warmup_steps)
        if sched.warmup_samples is not None:
            _non_negative("schedule.warmup_samples", sched.warmup_samples)
            steps = math.ceil(sched.warmup_samples / cfg.train.global_batch_size)
            return dataclasses.replace(sched, warmup_steps=steps)
        return sched
    _require(cfg.family == "resnet", "schedule.kind poly_warmup counts epochs; it needs a resnet benchmark")
    _exactly_one("schedule", decay_steps=sched.decay_steps, decay_epochs=sched.decay_epochs)
    if sched.decay_epochs is not None:
        _positive("schedule.decay_epochs", sched.decay_epochs)
        return dataclasses.replace(sched, decay_steps=math.ceil(sched.decay_epochs * cfg.steps_per_epoch))
    return sched


# ----- value checks -----

def _require(ok, message):
    if not ok:
        raise ConfigError(message)


def _positive(path, value):
    _require(value > 0, f"'{path}' must be > 0, got {value}")


def _non_negative(path, value):
    _require(value >= 0, f"'{path}' must be >= 0, got {value}")


def _exactly_one(where, **values):
    given = [k for k, v in values.items() if v is not None]
    names = " or ".join(f"'{where}.{k}'" for k in values)
    _require(len(given) == 1, f"give exactly one of {names}" + (", not both" if given else ""))


def _validate(cfg):
    _validate_pairing(cfg)
    (_validate_llama if cfg.family == "llama" else _validate_resnet)(cfg)
    _validate_optimizer(cfg.optimizer)
    _validate_schedule(cfg)
    _validate_train(cfg.train)
    _validate_eval(cfg)
    _validate_misc(cfg)
    if cfg.benchmark in CLOSED_RULES and cfg.mlperf.division == "closed":
        _validate_closed(cfg)


def _validate_pairing(cfg):
    model_name = "llama" if cfg.family == "llama" else "resnet"
    _require(cfg.model.name == model_name,
             f"benchmark {cfg.benchmark} needs model.name: {model_name}, got {cfg.model.name!r}")
    kinds = ("c4", "bytes", "synthetic_tokens") if cfg.family == "llama" else ("imagenet", "synthetic_images")
    _require(cfg.data.kind in kinds,
             f"benchmark {cfg.benchmark} needs data.kind one of {', '.join(kinds)}, got {cfg.data.kind!r}")


def _validate_llama(cfg):
    m, tp = cfg.model, cfg.mesh.tp
    for name in ("dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len"):
        _positive(f"model.{name}", getattr(m, name))
    _non_negative("model.n_layers", m.n_layers)   # 0 layers: embedding, norm and head (a bigram model, for tests)
    _require(m.dim % m.n_heads == 0, f"model.dim ({m.dim}) must be divisible by model.n_heads ({m.n_heads})")
    head = m.dim // m.n_heads
    _require(head % 2 == 0, f"head size model.dim / model.n_heads ({head}) must be even for RoPE")
    _require(m.n_heads % m.n_kv_heads == 0,
             f"model.n_heads ({m.n_heads}) must be divisible by model.n_kv_heads ({m.n_kv_heads})")
    _positive("model.rope_theta", m.rope_theta)
    _positive("model.norm_eps", m.norm_eps)
    if m.rope_scaling is not None:
        s = m.rope_scaling
        _positive("model.rope_scaling.factor", s.factor)
        _positive("model.rope_scaling.original_max_position", s.original_max_position)
        _require(0 < s.low_freq_factor < s.high_freq_factor,
                 "model.rope_scaling needs 0 < low_freq_factor < high_freq_factor")
    for name in ("n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
        _require(getattr(m, name) % tp == 0,
                 f"model.{name} ({getattr(m, name)}) must be divisible by mesh.tp ({tp})")
    _positive("data.seq_len", cfg.data.seq_len)
    _require(cfg.data.seq_len <= m.max_seq_len,
             f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_seq_len ({m.max_seq_len})")
    if cfg.data.kind == "bytes":
        _require(m.vocab_size >= 256, f"data.kind bytes needs model.vocab_size >= 256, got {m.vocab_size}")
    _require(cfg.train.max_samples is not None, "a llama benchmark caps its run with train.max_samples")


def _validate_resnet(cfg):
    m = cfg.model
    _require(m.num_classes >= 2, f"'model.num_classes' must be >= 2, got {m.num_classes}")
    _require(cfg.mesh.tp == 1, "resnet has no tensor parallelism; set mesh.tp: 1")
    _require(cfg.train.recompute == "none", "train.recompute: layer is for llama recipes (a recomputed block would "
             "update batch norm's running statistics twice); set it to none")
    if m.variant == "tiny":
        _require(len(m.blocks) > 0 and len(m.blocks) == len(m.widths),
                 "model variant tiny needs model.blocks and model.widths of the same, non-zero length")
        _require(all(b > 0 for b in m.blocks + m.widths), "model.blocks and model.widths must be > 0")
        for key in ("stem_width", "expansion"):
            if getattr(m, key) is not None: _positive(f"model.{key}", getattr(m, key))
    if m.bn_span is not None:
        _positive("model.bn_span", m.bn_span)
        _require(cfg.train.micro_batch_size % m.bn_span == 0,
                 f"'model.bn_span' ({m.bn_span}) must divide train.micro_batch_size ({cfg.train.micro_batch_size})")
    _positive("data.image_size", cfg.data.image_size)
    _non_negative("data.workers", cfg.data.workers)
    if cfg.data.kind == "synthetic_images":
        _positive("data.train_samples", cfg.data.train_samples)
    _require(cfg.train.max_epochs is not None, "a resnet benchmark caps its run with train.max_epochs")


def _validate_optimizer(opt):
    _positive("optimizer.lr", opt.lr)
    _require(all(0 <= b < 1 for b in opt.betas), f"'optimizer.betas' must lie in [0, 1), got {list(opt.betas)}")
    _non_negative("optimizer.eps", opt.eps)
    _non_negative("optimizer.weight_decay", opt.weight_decay)
    _require(0 <= opt.momentum < 1, f"'optimizer.momentum' must lie in [0, 1), got {opt.momentum}")
    if opt.grad_clip_norm is not None:
        _positive("optimizer.grad_clip_norm", opt.grad_clip_norm)
    _require(0 <= opt.label_smoothing < 1,
             f"'optimizer.label_smoothing' must lie in [0, 1), got {opt.label_smoothing}")


def _validate_schedule(cfg):
    s, lr = cfg.schedule, cfg.optimizer.lr
    _require(0 <= s.end_lr <= lr, f"'schedule.end_lr' must lie in [0, optimizer.lr = {lr}], got {s.end_lr}")
    if isinstance(s, CosineWarmup):
        _positive("schedule.max_steps", s.max_steps)
        _require(0 <= s.warmup_steps < s.max_steps,
                 f"warmup ({s.warmup_steps} steps) must be shorter than schedule.max_steps ({s.max_steps})")
    else:
        _non_negative("schedule.warmup_epochs", s.warmup_epochs)
        _positive("schedule.power", s.power)
        _positive("schedule.decay_steps", s.decay_steps)


def _validate_train(train):
    if train.seed is not None:
        _non_negative("train.seed", train.seed)
    _exactly_one("train", max_samples=train.max_samples, max_epochs=train.max_epochs)
    cap = train.max_samples if train.max_samples is not None else train.max_epochs
    _positive("train.max_samples" if train.max_samples is not None else "train.max_epochs", cap)
    p, size = train.precision, {"float32": 4, "bfloat16": 2, "float16": 2}
    _require(size[p.compute_dtype] <= size[p.param_dtype],
             f"train.precision.compute_dtype {p.compute_dtype} is wider than param_dtype {p.param_dtype}")


def _validate_eval(cfg):
    e = cfg.eval
    _positive("eval.samples", e.samples)
    _positive("eval.target", e.target)
    if cfg.family == "llama":
        _require(e.interval_samples is not None, "a llama benchmark needs eval.interval_samples")
        _require(e.interval_epochs is None and e.offset_epochs == 0,
                 "a llama benchmark evaluates by samples; remove eval.interval_epochs/offset_epochs")
        _positive("eval.interval_samples", e.interval_samples)
    else:
        _require(e.interval_epochs is not None, "a resnet benchmark needs eval.interval_epochs")
        _require(e.interval_samples is None, "a resnet benchmark evaluates by epochs; remove eval.interval_samples")
        _positive("eval.interval_epochs", e.interval_epochs)
        _non_negative("eval.offset_epochs", e.offset_epochs)
        _require(e.target <= 1, f"'eval.target' is a top-1 accuracy and must be <= 1, got {e.target}")


def _validate_misc(cfg):
    _positive("mesh.tp", cfg.mesh.tp)
    _positive("mesh.timeout_s", cfg.mesh.timeout_s)
    _positive("mesh.network_gbps", cfg.mesh.network_gbps)
    if cfg.checkpoint.every_steps is not None:
        _positive("checkpoint.every_steps", cfg.checkpoint.every_steps)
    _positive("checkpoint.keep", cfg.checkpoint.keep)
    _require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.mlperf.system) is not None,
             f"'mlperf.system' names files; use letters, digits, '.', '_' or '-', got {cfg.mlperf.system!r}")


# Values the MLPerf rules fix for closed-division runs (mlperf-logging 6.1.0 / 4.0.0 checkers).
# What the closed division fixes and the MLPerf log shows. The model's shape is not in the log and
# is not checked here, so tests can run a benchmark recipe with a shrunk model (see MLPERF.md).
CLOSED_RULES = {
    "llama31_8b": (
        ("data.kind", "c4"), ("data.seq_len", 8192),
        ("optimizer.name", "adamw"), ("optimizer.betas", (0.9, 0.95)), ("optimizer.eps", 1e-5),
        ("optimizer.weight_decay", 0.1), ("optimizer.no_weight_decay", "bias_and_1d"), ("optimizer.grad_clip_norm", 1.0),
        ("schedule.kind", "cosine_warmup"), ("schedule.max_steps", 1_200_000),
        ("eval.samples", 1024), ("eval.target", 3.3),
    ),
    "resnet": (
        ("data.kind", "imagenet"),
        ("schedule.kind", "poly_warmup"), ("schedule.power", 2.0), ("schedule.end_lr", 1e-4),
        ("eval.target", 0.759),
    ),
}


END_LR_FRACTION = 0.1   # llama31_8b: end LR = 0.1 x base LR (the rules; the reference's min_lr)


def _validate_closed(cfg):
    def closed(message):
        raise ConfigError(f"closed-division {cfg.benchmark}: {message} (or set mlperf.division: open)")

    for path, want in CLOSED_RULES[cfg.benchmark]:
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        if node != want:
            closed(f"'{path}' must be {want!r}, got {node!r}")
    if cfg.benchmark == "llama31_8b":
        lr, end = cfg.optimizer.lr, cfg.schedule.end_lr
        if not math.isclose(end, END_LR_FRACTION * lr, rel_tol=1e-9):
            closed(f"'schedule.end_lr' must be 0.1 x optimizer.lr = {END_LR_FRACTION * lr:g}, got {end:g} (leave it out to derive it)")
    if cfg.benchmark == "resnet":
        opt = cfg.optimizer
        if opt.name not in ("lars", "sgd"):
            closed(f"'optimizer.name' must be 'lars' or 'sgd', got {opt.name!r}")
        if opt.name == "lars" and opt.eps != 0.0:
            closed(f"LARS 'optimizer.eps' must be 0.0, got {opt.eps}")
        power = math.log2(opt.weight_decay / 1e-4) if opt.weight_decay > 0 else 0.5
        if abs(power - round(power)) > 1e-9:
            closed(f"'optimizer.weight_decay' must be 0.0001 times a power of two, got {opt.weight_decay}")
        if opt.name == "sgd" and abs(opt.lr / 1e-3 - round(opt.lr / 1e-3)) > 1e-9:
            closed(f"SGD 'optimizer.lr' must be a multiple of 0.001, got {opt.lr}")


__all__ = [
    "Config", "ConfigError", "load_config", "parse_config", "apply_overrides", "validate_mesh",
    "LlamaModel", "ResNetModel", "RopeScaling", "C4Data", "BytesData", "SyntheticTokenData",
    "ImageNetData", "SyntheticImageData", "OptimizerConfig", "CosineWarmup", "PolyWarmup",
    "Precision", "TrainConfig", "EvalConfig", "MeshConfig", "CheckpointConfig", "MLPerfConfig",
]
