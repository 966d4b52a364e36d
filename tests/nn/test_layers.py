import numpy as np
import pytest
from trainer.core import Tensor
from trainer.nn import Linear, LayerNorm, RMSNorm, Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d


rng = np.random.default_rng(0)


def test_linear_matches_numpy():
  l = Linear(5, 3)
  x = rng.standard_normal((2, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(l(Tensor(x)).numpy(), x @ l.weight.numpy().T + l.bias.numpy(), rtol=1e-5, atol=1e-6)
  assert Linear(5, 3, bias=False).bias is None
  assert np.abs(l.weight.numpy()).max() <= 1 / np.sqrt(5)


def test_norms_match_numpy():
  x = rng.standard_normal((3, 6)).astype(np.float32) * 2 + 1
  r = RMSNorm(6, eps=1e-5); r.load_state_dict({"weight": np.linspace(0.5, 1.5, 6).astype(np.float32)})
  ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * np.linspace(0.5, 1.5, 6)
  np.testing.assert_allclose(r(Tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-5)
  ln = LayerNorm(6)
  ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(ln(Tensor(x)).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_conv_and_pools_shapes():
  c = Conv2d(3, 4, 3, stride=2, padding=1)
  x = Tensor(rng.standard_normal((2, 3, 9, 9)).astype(np.float32))
  assert c(x).shape == (2, 4, 5, 5)
  assert MaxPool2d(3, 2, 1)(x).shape == (2, 3, 5, 5) and AvgPool2d(3)(x).shape == (2, 3, 3, 3)


def test_batchnorm_train_then_eval():
  bn = BatchNorm2d(3, momentum=0.1)
  bn.load_state_dict({"weight": np.array([1.0, 2.0, 0.5], np.float32), "bias": np.array([0.0, -1.0, 1.0], np.float32),
                      "running_mean": np.zeros(3, np.float32), "running_var": np.ones(3, np.float32),
                      "num_batches_tracked": np.array(0, np.int64)})
  x = (rng.standard_normal((4, 3, 5, 5)) * 3 + 2).astype(np.float32)
  y = bn(Tensor(x)).numpy()
  m, v = x.mean((0, 2, 3)), x.var((0, 2, 3))
  ref = (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5) * np.array([1, 2, 0.5])[None, :, None, None] + np.array([0, -1, 1])[None, :, None, None]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  rm, rv = 0.1 * m, 0.9 + 0.1 * v * 100 / 99
  np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5)
  x2 = (rng.standard_normal((4, 3, 5, 5)) + 1).astype(np.float32)
  bn(Tensor(x2))
  rm2 = 0.9 * rm + 0.1 * x2.mean((0, 2, 3)); rv2 = 0.9 * rv + 0.1 * x2.var((0, 2, 3)) * 100 / 99
  np.testing.assert_allclose(bn.running_mean.numpy(), rm2, rtol=1e-5, atol=1e-6)
  assert int(bn.num_batches_tracked.numpy()) == 2
  bn.eval()
  y = bn(Tensor(x2)).numpy()
  ref = (x2 - rm2[None, :, None, None]) / np.sqrt(rv2[None, :, None, None] + 1e-5) * np.array([1, 2, 0.5])[None, :, None, None] + np.array([0, -1, 1])[None, :, None, None]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn.running_mean.numpy(), rm2, rtol=1e-5, atol=1e-6)   # eval leaves stats alone


def test_batchnorm_span_normalises_each_group_of_samples():
  """span=2 on a batch of 6: three groups of 2 samples, each normalised by its own statistics (MLPerf's
  model_bn_span); the running stats move by the groups' mean statistics, as replicas' averaged updates would."""
  bn = BatchNorm2d(3, momentum=0.1, span=2)
  w, b = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 1.0])
  bn.load_state_dict({"weight": w.astype(np.float32), "bias": b.astype(np.float32), "running_mean": np.zeros(3, np.float32),
                      "running_var": np.ones(3, np.float32), "num_batches_tracked": np.array(0, np.int64)})
  x = (rng.standard_normal((6, 3, 4, 5)) * 3 + 2).astype(np.float32)
  y = bn(Tensor(x)).numpy()
  g = x.astype(np.float64).reshape(3, 2, 3, 4, 5)
  m, v = g.mean((1, 3, 4), keepdims=True), g.var((1, 3, 4), keepdims=True)
  ref = ((g - m) / np.sqrt(v + 1e-5)).reshape(6, 3, 4, 5) * w[None, :, None, None] + b[None, :, None, None]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * m.mean(0).ravel(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * v.mean(0).ravel() * 40 / 39, rtol=1e-5)
  with pytest.raises(ValueError, match="span 4"):
    BatchNorm2d(3, span=4)(Tensor(x))
