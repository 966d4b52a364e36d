"""Llama 3.1 (decoder-only transformer) with Hugging Face parameter names and rotary convention.

RMSNorm -> grouped-query attention with rotary embeddings (theta 500000, Llama 3.1 frequency scaling)
-> residual -> RMSNorm -> SwiGLU MLP -> residual; final RMSNorm and an untied output head.
Rotary embeddings use HF's rotate_half on the two halves of each head (the layout of HF's permuted
q/k weights), so published `LlamaForCausalLM` safetensors load with `load_state_dict` and give the
published logits.

Init, as the MLPerf reference (NeMo on Megatron-core): the embedding and every Linear ~ normal(0, 0.02)
(`init_method_std`), but the two that write into the residual stream, the attention's o_proj and the MLP's
down_proj, ~ normal(0, 0.02 / sqrt(2 * n_layers)) (Megatron's `output_layer_init_method`,
scaled_init_method_normal; 0.0025 at 32 layers); norms = 1. No bias anywhere.
"""
from __future__ import annotations
import math
from dataclasses import dataclass
import numpy as np
from ..core import Tensor
from ..nn import Module, Linear, Embedding, RMSNorm
from ..nn.module import materialize


@dataclass(frozen=True)
class LlamaConfig:
  dim: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 8
  ffn_dim: int = 14336
  vocab_size: int = 128256
  norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  max_seq_len: int = 8192
  # Llama 3.1 rope scaling (None disables it)
  rope_scaling_factor: float | None = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_pos: int = 8192
  init_std: float = 0.02
  dtype: str = "float32"

  @property
  def head_dim(self) -> int: return self.dim // self.n_heads

  @property
  def output_init_std(self) -> float:
    """The std of o_proj and down_proj: init_std / sqrt(2 * n_layers) (Megatron's scaled_init_method_normal)."""
    return self.init_std / math.sqrt(2 * max(self.n_layers, 1))

  def num_params(self) -> int:
    kv = self.n_kv_heads * self.head_dim
    layer = self.dim * (self.dim + 2 * kv) + self.dim * self.dim + 3 * self.dim * self.ffn_dim + 2 * self.dim
    return self.n_layers * layer + 2 * self.vocab_size * self.dim + self.dim


LLAMA31_8B = LlamaConfig()


def tiny_config(**kw) -> LlamaConfig:
  """A few-thousand-parameter Llama for tests (scaling kicks in: original max pos 16)."""
  base = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=32,
              rope_theta=10000.0, rope_original_max_pos=16)
  base.update(kw)
  return LlamaConfig(**base)


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """Per-pair rotary frequencies (head_dim/2,), float64, with Llama 3.1 scaling:
  wavelengths shorter than original_max_pos/high_freq_factor keep their frequency, longer than
  original_max_pos/low_freq_factor are divided by `factor`, and those between are blended with
  smooth = (original_max_pos/wavelen - low) / (high - low): (1 - smooth) * f/factor + smooth * f."""
  d = cfg.head_dim
  freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  if cfg.rope_scaling_factor is None: return freq
  factor, lo, hi, old = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_pos
  wavelen = 2 * math.pi / freq
  smooth = (old / wavelen - lo) / (hi - lo)
  blended = (1 - smooth) * freq / factor + smooth * freq
  return np.where(wavelen < old / hi, freq, np.where(wavelen > old / lo, freq / factor, blended))


def rope_tables(cfg: LlamaConfig, device=None) -> tuple[Tensor, Tensor]:
  """cos, sin of shape (max_seq_len, head_dim), HF layout (the frequencies repeated for both halves)."""
  ang = np.outer(np.arange(cfg.max_seq_len, dtype=np.float64), rope_inv_freq(cfg))
  ang = np.concatenate([ang, ang], axis=-1)
  return (materialize(Tensor(np.cos(ang).astype(np.float32), device=device), False),
          materialize(Tensor(np.sin(ang).astype(np.float32), device=device), False))


def rotate_half(x: Tensor) -> Tensor:
  h = x.shape[-1] // 2
  return Tensor.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
  """x (B, T, H, D); cos/sin (T, D). Computed in float32, returned in x's dtype."""
  T, D = cos.shape
  c, s = cos.reshape(1, T, 1, D), sin.reshape(1, T, 1, D)
  xf = x.float()
  return (xf * c + rotate_half(xf) * s).cast(x.dtype)


class LlamaAttention(Module):
  def __init__(self, cfg: LlamaConfig, device=None):
    hd = cfg.head_dim
    kw = dict(bias=False, dtype=cfg.dtype, device=device, std=cfg.init_std)
    self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
    self.q_proj = Linear(cfg.dim, cfg.n_heads * hd, **kw)
    self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, **kw)
    self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, **kw)
    self.o_proj = Linear(cfg.n_heads * hd, cfg.dim, **(kw | {"std": cfg.output_init_std}))

  def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    B, T, _ = x.shape
    q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim)
    k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    o = q.transpose(1, 2).scaled_dot_product_attention(k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True)
    return self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class LlamaMLP(Module):
  def __init__(self, cfg: LlamaConfig, device=None):
    kw = dict(bias=False, dtype=cfg.dtype, device=device, std=cfg.init_std)
    self.gate_proj = Linear(cfg.dim, cfg.ffn_dim, **kw)
    self.up_proj = Linear(cfg.dim, cfg.ffn_dim, **kw)
    self.down_proj = Linear(cfg.ffn_dim, cfg.dim, **(kw | {"std": cfg.output_init_std}))

  def forward(self, x: Tensor) -> Tensor:
    return self.down_proj(self.gate_proj(x).silu() * self.up_proj(x))


class LlamaDecoderLayer(Module):
  def __init__(self, cfg: LlamaConfig, device=None):
    self.self_attn = LlamaAttention(cfg, device)
    self.mlp = LlamaMLP(cfg, device)
    self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype=cfg.dtype, device=device)
    self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype=cfg.dtype, device=device)

  def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    h = x + self.self_attn(self.input_layernorm(x), cos, sin)
    return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(Module):
  def __init__(self, cfg: LlamaConfig, device=None):
    self.embed_tokens = Embedding(cfg.vocab_size, cfg.dim, dtype=cfg.dtype, device=device, std=cfg.init_std)
    self.layers = [LlamaDecoderLayer(cfg, device) for _ in range(cfg.n_layers)]
    self.norm = RMSNorm(cfg.dim, cfg.norm_eps, dtype=cfg.dtype, device=device)

  def forward(self, tokens: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    h = self.embed_tokens(tokens)
    for layer in self.layers: h = layer(h, cos, sin)
    return self.norm(h)


class Llama(Module):
  """Llama 3.1 for causal LM: forward(tokens (B, T) int) -> logits (B, T, vocab) in cfg.dtype."""
  def __init__(self, cfg: LlamaConfig = LLAMA31_8B, device=None):
    self.config = cfg
    self.model = LlamaModel(cfg, device)
    self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False, dtype=cfg.dtype, device=device, std=cfg.init_std)
    self._cos, self._sin = rope_tables(cfg, device)

  def forward(self, tokens: Tensor) -> Tensor:
    T = tokens.shape[-1]
    if T > self.config.max_seq_len: raise ValueError(f"Llama: sequence of {T} tokens is longer than max_seq_len {self.config.max_seq_len}")
    cos, sin = self._cos[:T], self._sin[:T]
    return self.lm_head(self.model(tokens, cos, sin))

  def loss(self, tokens_in: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Next-token cross entropy in float32 over targets != ignore_index (mean, or sum), one row per token."""
    logits = self(tokens_in).float()
    return logits.reshape(-1, logits.shape[-1]).cross_entropy(targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)
