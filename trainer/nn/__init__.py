"""trainer.nn: Module base, layers, optimizers and learning-rate schedules."""
from .module import Module, materialize, recompute_blocks
from .layers import Linear, Embedding, RMSNorm, LayerNorm, Conv2d, BatchNorm2d, Dropout, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d1
from .optim import Optimizer, SGD, AdamW, LARS, clip_grad_norm, clip_scale
from .schedule import WarmupCosine, WarmupPolynomial, warmup_cosine_lr, warmup_poly_lr
