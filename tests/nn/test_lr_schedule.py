import math
import numpy as np
from trainer.core import Tensor
from trainer.nn import WarmupCosine, WarmupPolynomial, SGD


def test_warmup_cosine_key_steps():
  s = WarmupCosine(base_lr=8e-4, warmup_steps=10, decay_steps=90, end_lr=8e-5)
  assert math.isclose(s(0), 8e-4 / 11) and math.isclose(s(4), 8e-4 * 5 / 11)     # NeMo: (s + 1) / (W + 1)
  assert math.isclose(s(9), 8e-4 * 10 / 11) and math.isclose(s(10), 8e-4)
  assert math.isclose(s(55), 8e-5 + (8e-4 - 8e-5) * 0.5)                    # half-way through the decay
  assert math.isclose(s(10 + 30), 8e-5 + (8e-4 - 8e-5) * 0.5 * (1 + math.cos(math.pi / 3)))
  assert math.isclose(s(100), 8e-5) and math.isclose(s(1000), 8e-5)
  vals = [s(i) for i in range(10, 101)]
  assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_warmup_poly_key_steps():
  s = WarmupPolynomial(base_lr=10.0, warmup_steps=5, decay_steps=20, end_lr=1e-4, power=2)
  assert s(0) == 0.0 and math.isclose(s(2), 4.0) and math.isclose(s(5), 10.0)
  assert math.isclose(s(15), (10 - 1e-4) * 0.25 + 1e-4)
  assert math.isclose(s(25), 1e-4) and math.isclose(s(40), 1e-4)


def test_apply_writes_the_device_lr():
  opt = SGD([Tensor(np.ones(2, np.float32), requires_grad=True)], lr=1.0)
  s = WarmupCosine(1.0, 4, 8, 0.1)
  for step in (0, 3, 7, 20):
    v = s.apply(opt, step)
    np.testing.assert_allclose(opt.lr.numpy(), [v], rtol=1e-7)


def test_resnet_poly_decays_over_the_logged_decay_steps_after_warmup():
  """The reference (image_classification/tensorflow2/lars_util.py, PolynomialDecayWithWarmup) logs
  lars_opt_learning_rate_decay_steps and decays over exactly that many steps after the warmup:
  lr = base * step / W for step <= W, else Keras PolynomialDecay of (step - W) with decay_steps D."""
  import os
  from trainer.build import build_schedule
  from trainer.config import load_config
  cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "resnet.yaml"))
  s = build_schedule(cfg)
  W, D, base, end = 2 * (1281167 // 3264), 14523, 10.5, 1e-4
  assert cfg.schedule.decay_steps == D

  def reference(step):
    if step <= W: return base * step / W
    return (base - end) * (1 - min(step - W, D) / D) ** 2 + end

  steps = [0, 1, W - 1, W, W + 1, W + D // 2, W + D - 1, W + D, W + D + 500]
  steps += np.random.default_rng(0).integers(0, W + D + 100, 20).tolist()
  for step in steps:
    assert math.isclose(s(step), reference(step), rel_tol=1e-12), (step, s(step), reference(step))
