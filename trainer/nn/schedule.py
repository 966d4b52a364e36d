"""Learning-rate schedules as plain functions of the step, and small callables that write the value
into an optimizer's device LR tensor (`sched.apply(opt, step)`), so a jitted step picks it up.

`step` counts optimizer steps already taken (0 for the first update).
"""
from __future__ import annotations
import math
from dataclasses import dataclass


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, decay_steps: int, end_lr: float = 0.0) -> float:
  """Linear warmup then cosine decay, as the MLPerf llama31_8b reference runs it (NeMo's CosineAnnealing with
  warmup, nemo/core/optim/lr_scheduler.py: _get_warmup_lr and _cosine_annealing; the first update is step 0) and
  logs it (opt_learning_rate_warmup_steps, opt_learning_rate_decay_steps = max_steps - warmup_steps,
  opt_end_learning_rate):
    step <= warmup:  base * (step + 1) / (warmup + 1)    (base at step == warmup)
    step >  warmup:  end + (base - end) * (1 + cos(pi * min(step - warmup, decay) / decay)) / 2
  so the LR is end from step == warmup + decay (== max_steps) on."""
  if step <= warmup_steps: return base_lr * (step + 1) / (warmup_steps + 1)
  if decay_steps <= 0: return end_lr if step > warmup_steps else base_lr
  p = min(step - warmup_steps, decay_steps) / decay_steps
  return end_lr + (base_lr - end_lr) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_poly_lr(step: int, base_lr: float, warmup_steps: int, decay_steps: int, end_lr: float = 1e-4, power: float = 2.0) -> float:
  """The MLPerf ResNet LARS reference (tensorflow2/lars_util.py PolynomialDecayWithWarmup), whose logged
  lars_opt_learning_rate_decay_steps is the length D of the decay after the warmup:
    step <  warmup:  base * step / warmup
    step >= warmup:  (base - end) * (1 - min(step - warmup, D) / D) ** power + end,  D = decay_steps
  so the LR is end from step == warmup + D on."""
  if warmup_steps > 0 and step < warmup_steps: return base_lr * step / warmup_steps
  if decay_steps <= 0: return end_lr
  p = min(step - warmup_steps, decay_steps) / decay_steps
  return (base_lr - end_lr) * (1 - p) ** power + end_lr


@dataclass
class WarmupCosine:
  base_lr: float
  warmup_steps: int
  decay_steps: int
  end_lr: float = 0.0
  def __call__(self, step: int) -> float: return warmup_cosine_lr(step, self.base_lr, self.warmup_steps, self.decay_steps, self.end_lr)
  def apply(self, opt, step: int) -> float:
    lr = self(step); opt.set_lr(lr); return lr


@dataclass
class WarmupPolynomial:
  base_lr: float
  warmup_steps: int
  decay_steps: int
  end_lr: float = 1e-4
  power: float = 2.0
  def __call__(self, step: int) -> float: return warmup_poly_lr(step, self.base_lr, self.warmup_steps, self.decay_steps, self.end_lr, self.power)
  def apply(self, opt, step: int) -> float:
    lr = self(step); opt.set_lr(lr); return lr
