"""Layers: Linear, Embedding, RMSNorm, LayerNorm, Conv2d, BatchNorm2d, Dropout, pooling.

Weights use PyTorch's layouts and names (Linear weight (out, in), Conv2d weight (O, C/groups, kh, kw),
BatchNorm2d weight/bias/running_mean/running_var/num_batches_tracked), so torch and Hugging Face
state dicts load as they are. Every parameter is realized at construction (it owns its buffer).
"""
from __future__ import annotations
import math
from ..core import Tensor, dtypes
from ..core.kernels.rows import take_rows
from .module import Module, materialize


def _param(t: Tensor, dtype=None) -> Tensor:
  if dtype is not None: t = t.cast(dtypes.get(dtype))
  return materialize(t, requires_grad=True)


def _buffer(t: Tensor) -> Tensor: return materialize(t, requires_grad=False)


class Linear(Module):
  """y = x @ weight.T + bias; weight (out, in). Init as torch: U(-1/sqrt(in), 1/sqrt(in))."""
  def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, device=None, std: float | None = None):
    self.in_features, self.out_features = in_features, out_features
    bound = 1 / math.sqrt(in_features)
    w = Tensor.randn(out_features, in_features, device=device) * std if std is not None else \
        Tensor.uniform(out_features, in_features, low=-bound, high=bound, device=device)
    self.weight = _param(w, dtype)
    self.bias = (_param(Tensor.zeros(out_features, device=device) if std is not None else
                        Tensor.uniform(out_features, low=-bound, high=bound, device=device), dtype) if bias else None)

  def forward(self, x: Tensor) -> Tensor:
    return x.linear(self.weight, self.bias)


class Embedding(Module):
  """weight (num, dim); forward(idx) = weight[idx]. Init normal(0, std) (torch's default std is 1)."""
  def __init__(self, num_embeddings: int, embedding_dim: int, dtype=None, device=None, std: float = 1.0):
    self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
    self.weight = _param(Tensor.randn(num_embeddings, embedding_dim, device=device) * std, dtype)

  def forward(self, idx: Tensor) -> Tensor:
    return take_rows(self.weight, idx)


class RMSNorm(Module):
  """x / sqrt(mean(x^2) + eps) * weight over the last axis (computed in float32)."""
  def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
    self.eps = eps
    self.weight = _param(Tensor.ones(dim, device=device), dtype)

  def forward(self, x: Tensor) -> Tensor:
    return x.rms_norm(self.weight.shape, self.weight, self.eps)


class LayerNorm(Module):
  def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, dtype=None, device=None):
    self.dim, self.eps = dim, eps
    self.weight = _param(Tensor.ones(dim, device=device), dtype) if elementwise_affine else None
    self.bias = _param(Tensor.zeros(dim, device=device), dtype) if elementwise_affine and bias else None

  def forward(self, x: Tensor) -> Tensor:
    return x.layer_norm(self.dim, self.weight, self.bias, self.eps)


class Conv2d(Module):
  """As torch.nn.Conv2d; init as torch (kaiming uniform a=sqrt(5)) unless a model re-initializes it."""
  def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
               bias: bool = True, dtype=None, device=None):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
    self.weight = _param(Tensor.kaiming_uniform(out_channels, in_channels // groups, kh, kw, device=device), dtype)
    bound = 1 / math.sqrt(in_channels // groups * kh * kw)
    self.bias = _param(Tensor.uniform(out_channels, low=-bound, high=bound, device=device), dtype) if bias else None

  def forward(self, x: Tensor) -> Tensor:
    return x.conv2d(self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNorm2d(Module):
  """Batch norm over (N, H, W) per channel, as torch.nn.BatchNorm2d.

  Training: normalizes with the batch mean and biased variance, and updates the running stats in
  place (`assign`, realized right away so a jitted step records the update):
  running = (1 - momentum) * running + momentum * batch_stat, with the unbiased variance.
  Eval: normalizes with the running stats.
  `span` (not torch's; MLPerf's model_bn_span): in training, each group of `span` consecutive samples is
  normalized by its own statistics, and the running stats move by the mean of the groups' statistics,
  as data-parallel replicas of `span` samples each would with averaged updates. None: the whole batch."""
  def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True, dtype=None, device=None,
               span: int | None = None):
    self.num_features, self.eps, self.momentum, self.span = num_features, eps, momentum, span
    self.weight = _param(Tensor.ones(num_features, device=device), dtype) if affine else None
    self.bias = _param(Tensor.zeros(num_features, device=device), dtype) if affine else None
    self.register_buffer("running_mean", _buffer(Tensor.zeros(num_features, device=device)))
    self.register_buffer("running_var", _buffer(Tensor.ones(num_features, device=device)))
    self.register_buffer("num_batches_tracked", _buffer(Tensor.zeros((), dtype=dtypes.int64, device=device)))

  def forward(self, x: Tensor) -> Tensor:
    C = self.num_features
    xf = x.float()   # statistics in float32
    if self.training:
      N, _, H, W = x.shape
      span = self.span or N
      if N % span: raise ValueError(f"BatchNorm2d: a batch of {N} samples does not split into groups of span {span}")
      g = xf.reshape(N // span, span, C, H, W)
      mean = g.mean((1, 3, 4), keepdim=True)
      d = g - mean
      var = (d * d).mean((1, 3, 4), keepdim=True)
      n, m = span * H * W, self.momentum
      self.running_mean.assign(self.running_mean * (1 - m) + mean.detach().mean(0).reshape(C) * m)
      self.running_var.assign(self.running_var * (1 - m) + var.detach().mean(0).reshape(C) * (m * n / max(n - 1, 1)))
      self.num_batches_tracked.assign(self.num_batches_tracked + 1)
      Tensor.realize_all(self.running_mean, self.running_var, self.num_batches_tracked)
      out = (d * (var + self.eps).rsqrt()).reshape(N, C, H, W)
    else:
      out = (xf - self.running_mean.reshape(1, C, 1, 1)) * (self.running_var + self.eps).rsqrt().reshape(1, C, 1, 1)
    if self.weight is not None: out = out * self.weight.float().reshape(1, C, 1, 1) + self.bias.float().reshape(1, C, 1, 1)
    return out.cast(x.dtype)


class Dropout(Module):
  """Zeroes each element with probability p in training mode and scales the rest by 1/(1-p)."""
  def __init__(self, p: float = 0.5):
    self.p = p

  def forward(self, x: Tensor) -> Tensor:
    if not self.training or self.p == 0: return x
    keep = Tensor.rand(*x.shape, device=x.device) >= self.p
    return (x * (1.0 / (1 - self.p))).where(keep, 0.0)


class MaxPool2d(Module):
  def __init__(self, kernel_size, stride=None, padding=0):
    self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
  def forward(self, x: Tensor) -> Tensor: return x.max_pool2d(self.kernel_size, self.stride, self.padding)


class AvgPool2d(Module):
  def __init__(self, kernel_size, stride=None, padding=0):
    self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
  def forward(self, x: Tensor) -> Tensor: return x.avg_pool2d(self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d1(Module):
  """Global average pooling (torch's AdaptiveAvgPool2d(1)), flattened to (N, C)."""
  def forward(self, x: Tensor) -> Tensor: return x.mean((2, 3))
