"""Neural-network ops composed from the Tensor API: convolution, pooling, normalisation, attention
and losses. They are attached to Tensor as methods (x.conv2d(w), x.cross_entropy(y), ...)."""
from __future__ import annotations
import math
from .tensor import Tensor, _ramp, _shape_str
from .dtypes import dtypes


def _pair(x): return (x, x) if isinstance(x, int) else tuple(x)


def _windows(x: Tensor, kernel, stride, dilation) -> Tensor:
  """(N, C, H, W) -> (N, C, kh*kw, OH, OW): every kernel tap as a strided slice, stacked."""
  (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
  H, W = x.shape[-2:]
  oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
  if oh <= 0 or ow <= 0: raise ValueError(f"window {kernel} with dilation {dilation} does not fit input of size {(H, W)}")
  taps = [x[..., i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw] for i in range(kh) for j in range(kw)]
  return Tensor.stack(taps, dim=-3) if len(taps) > 1 else taps[0].unsqueeze(-3)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
  """x (N, C, H, W), weight (O, C/groups, kh, kw) -> (N, O, OH, OW), as torch.nn.functional.conv2d."""
  if x.ndim != 4 or weight.ndim != 4: raise ValueError(f"conv2d: expected 4-d input and weight, got {_shape_str(x.shape)} and {_shape_str(weight.shape)}")
  N, C, H, W = x.shape
  O, Cg, kh, kw = weight.shape
  if C != Cg * groups or O % groups:
    raise ValueError(f"conv2d: input {_shape_str(x.shape)} and weight {_shape_str(weight.shape)} do not match with groups={groups}")
  ph, pw = _pair(padding)
  if ph or pw: x = x.pad(((0, 0), (0, 0), (ph, ph), (pw, pw)))
  cols = _windows(x, (kh, kw), _pair(stride), _pair(dilation))                 # N, C, K, OH, OW
  OH, OW = cols.shape[-2:]
  cols = cols.reshape(N, groups, Cg * kh * kw, OH * OW).transpose(-1, -2)     # N, g, OH*OW, Cg*K
  w = weight.reshape(groups, O // groups, Cg * kh * kw).transpose(-1, -2)     # g, Cg*K, O/g
  out = (cols @ w).transpose(-1, -2).reshape(N, O, OH, OW)
  return out + bias.reshape(1, O, 1, 1) if bias is not None else out


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1) -> Tensor:
  k = _pair(kernel_size)
  ph, pw = _pair(padding)
  if ph or pw: x = x.pad(((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)), value=float("-inf"))
  return _windows(x, k, _pair(stride if stride is not None else k), _pair(dilation)).max(-3)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
  """Average over each window; padding counts as zeros (torch's count_include_pad=True)."""
  k = _pair(kernel_size)
  ph, pw = _pair(padding)
  if ph or pw: x = x.pad(((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)))
  return _windows(x, k, _pair(stride if stride is not None else k), (1, 1)).mean(-3)


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
  axes = tuple(range(x.ndim - len(_pair(normalized_shape) if not isinstance(normalized_shape, int) else (normalized_shape,)), x.ndim))
  xf = x._float()
  mean = xf.mean(axes, keepdim=True)
  d = xf - mean
  out = d * ((d * d).mean(axes, keepdim=True) + eps).rsqrt()
  if weight is not None: out = out * weight
  if bias is not None: out = out + bias
  return out.cast(x.dtype)


def rms_norm(x: Tensor, weight=None, eps=1e-6) -> Tensor:
  """x / sqrt(mean(x^2) + eps) * weight over the last axis, computed in float32."""
  xf = x._float()
  out = xf * ((xf * xf).mean(-1, keepdim=True) + eps).rsqrt()
  out = out.cast(x.dtype)
  return out * weight if weight is not None else out


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal=False, scale=None) -> Tensor:
  """q (..., H, T, D), k/v (..., Hkv, S, D) with H a multiple of Hkv (grouped-query heads share k/v)."""
  *b, H, T, D = q.shape
  Hkv, S = k.shape[-3], k.shape[-2]
  if H % Hkv or k.shape != v.shape[:-1] + (k.shape[-1],) or k.shape[-1] != D:
    raise ValueError(f"scaled_dot_product_attention: q {_shape_str(q.shape)}, k {_shape_str(k.shape)}, v {_shape_str(v.shape)} do not fit")
  from .kernels import attention
  from . import precision
  precision.note("attention", q.dtype)
  if attention.covers(q, k, v, attn_mask, scale): return attention.flash_attention(q, k, v, is_causal, scale)
  rep = H // Hkv
  qg = q.reshape(*b, Hkv, rep, T, D)
  s = (qg @ k.unsqueeze(-3).transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(D))   # ..., Hkv, rep, T, S
  if is_causal:
    keep = _ramp(T, q.device).reshape(T, 1) + (S - T) >= _ramp(S, q.device).reshape(1, S)
    s = s.where(keep, float("-inf"))
  if attn_mask is not None:
    m = attn_mask.reshape(*attn_mask.shape[:-3], Hkv, rep, T, S) if attn_mask.ndim >= 3 and attn_mask.shape[-3] == H else attn_mask
    s = s.where(m, float("-inf")) if m.dtype is dtypes.bool else s + m
  out = s.softmax(-1).cast(v.dtype) @ v.unsqueeze(-3)
  return out.reshape(*b, H, T, v.shape[-1])


def one_hot(x: Tensor, num_classes: int) -> Tensor:
  return (x.unsqueeze(-1) == _ramp(num_classes, x.device).reshape((1,) * x.ndim + (num_classes,))).cast(dtypes.float32)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index=-100, label_smoothing=0.0, reduction="mean") -> Tensor:
  """logits (..., C) with integer targets (...); mean over targets that are not ignore_index."""
  if logits.shape[:-1] != target.shape:
    raise ValueError(f"cross_entropy: logits {_shape_str(logits.shape)} need targets of shape {_shape_str(logits.shape[:-1])}, got {_shape_str(target.shape)}")
  C = logits.shape[-1]
  logp = logits._float().log_softmax(-1)
  hit = target.unsqueeze(-1) == _ramp(C, logits.device).reshape((1,) * target.ndim + (C,))
  loss = -(logp.where(hit, 0.0).sum(-1))
  if label_smoothing: loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(-1)
  keep = (target != ignore_index)
  loss = loss.where(keep, 0.0)
  if reduction == "none": return loss
  if reduction == "sum": return loss.sum()
  return loss.sum() / keep.sum().cast(dtypes.float32).maximum(1.0)


def binary_cross_entropy_with_logits(x: Tensor, y: Tensor) -> Tensor:
  return (x.maximum(0) - x * y + (1 + (-x.abs()).exp()).log()).mean()


for _f in (conv2d, max_pool2d, avg_pool2d, layer_norm, rms_norm, scaled_dot_product_attention, one_hot, cross_entropy, binary_cross_entropy_with_logits):
  setattr(Tensor, _f.__name__, _f)
