"""ResNet-50 v1.5 (torchvision names): the stride of a downsampling bottleneck is on its 3x3 conv.

Init, as the MLPerf TF2 reference (mlcommons/training image_classification/tensorflow2/resnet_model.py):
every conv kernel Keras `he_normal` (a normal truncated at 2 std, its std after truncation
sqrt(2 / fan_in), fan_in = in_ch*kh*kw: drawn std sqrt(2 / fan_in) / 0.8796...); BN gamma 1, beta 0;
fc weight ~ normal(0, 0.01) untruncated (`RandomNormal(stddev=0.01)`), bias 0. The reference keeps every
BN gamma at 1, so `zero_init_residual` (gamma 0 on each block's last BN, as in Goyal et al. and
torchvision's option) defaults to False and can be switched on.
"""
from __future__ import annotations
import math
from dataclasses import dataclass
from ..core import Tensor, random
from ..nn import Module, Conv2d, BatchNorm2d, Linear
from ..nn.module import materialize


@dataclass(frozen=True)
class ResNetConfig:
  layers: tuple = (3, 4, 6, 3)
  widths: tuple = (64, 128, 256, 512)
  stem_width: int = 64
  expansion: int = 4
  num_classes: int = 1000
  zero_init_residual: bool = False
  dtype: str = "float32"
  bn_span: int | None = None   # batch norm over groups of this many samples in training (None: the whole batch)


RESNET50 = ResNetConfig()


def tiny_config(**kw) -> ResNetConfig:
  base = dict(layers=(1, 1), widths=(4, 8), stem_width=8, expansion=4, num_classes=10)
  base.update(kw)
  return ResNetConfig(**base)


def _conv(cin, cout, k, stride=1, padding=0, dtype=None, device=None) -> Conv2d:
  """A conv without bias, its kernel Keras he_normal (VarianceScaling(2, fan_in, truncated_normal))."""
  c = Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, dtype=dtype, device=device)
  std = math.sqrt(2.0 / (cin * k * k)) / random.TRUNCATED_NORMAL_STD
  w = random.truncated_normal(c.weight.shape, "float32", device) * std
  c.weight = materialize(w.cast(c.weight.dtype), requires_grad=True)
  return c


class Bottleneck(Module):
  def __init__(self, cin: int, width: int, stride: int, cfg: ResNetConfig, device=None):
    out = width * cfg.expansion
    kw, bn = dict(dtype=cfg.dtype, device=device), dict(dtype=cfg.dtype, device=device, span=cfg.bn_span)
    self.conv1, self.bn1 = _conv(cin, width, 1, **kw), BatchNorm2d(width, **bn)
    self.conv2, self.bn2 = _conv(width, width, 3, stride, 1, **kw), BatchNorm2d(width, **bn)
    self.conv3, self.bn3 = _conv(width, out, 1, **kw), BatchNorm2d(out, **bn)
    if cfg.zero_init_residual: self.bn3.weight.assign(self.bn3.weight.zeros_like()).realize()
    self.downsample = [_conv(cin, out, 1, stride, **kw), BatchNorm2d(out, **bn)] if stride != 1 or cin != out else None

  def forward(self, x: Tensor) -> Tensor:
    h = self.bn1(self.conv1(x)).relu()
    h = self.bn2(self.conv2(h)).relu()
    h = self.bn3(self.conv3(h))
    sc = self.downsample[1](self.downsample[0](x)) if self.downsample else x
    return (h + sc).relu()


class ResNet(Module):
  """forward(images (N, 3, H, W)) -> logits (N, num_classes)."""
  def __init__(self, cfg: ResNetConfig = RESNET50, device=None):
    self.config = cfg
    kw = dict(dtype=cfg.dtype, device=device)
    self.conv1, self.bn1 = _conv(3, cfg.stem_width, 7, 2, 3, **kw), BatchNorm2d(cfg.stem_width, **kw, span=cfg.bn_span)
    cin = cfg.stem_width
    for i, (n, w) in enumerate(zip(cfg.layers, cfg.widths)):
      blocks = []
      for j in range(n):
        blocks.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1, cfg, device))
        cin = w * cfg.expansion
      setattr(self, f"layer{i + 1}", blocks)
    self.fc = Linear(cin, cfg.num_classes, dtype=cfg.dtype, device=device, std=0.01)
    self._n_stages = len(cfg.layers)

  def forward(self, x: Tensor) -> Tensor:
    x = self.bn1(self.conv1(x.cast(self.conv1.weight.dtype))).relu().max_pool2d(3, 2, 1)
    for i in range(self._n_stages):
      for b in getattr(self, f"layer{i + 1}"): x = b(x)
    return self.fc(x.mean((2, 3)).cast(self.fc.weight.dtype))

  def loss(self, images: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return self(images).float().cross_entropy(labels, label_smoothing=label_smoothing)
