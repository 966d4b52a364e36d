import numpy as np
import pytest
from trainer.core import Tensor, jit
from trainer.models.resnet import ResNet, ResNetConfig, RESNET50, tiny_config
from trainer.nn import SGD, LARS


def np_conv(x, w, stride=1, pad=0):
  N, C, H, W = x.shape
  O, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  OH, OW = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
  out = np.zeros((N, O, OH, OW))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, :, i:i + stride * (OH - 1) + 1:stride, j:j + stride * (OW - 1) + 1:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def np_bn(x, W, p, train, stats, span=None):
  """Batch norm; in training over groups of `span` samples (the whole batch when None)."""
  g, b = W[p + ".weight"][None, :, None, None], W[p + ".bias"][None, :, None, None]
  if not train:
    mean, var = W[p + ".running_mean"], W[p + ".running_var"]
    return (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) * g + b
  N, C, H, Wd = x.shape
  span = span or N
  xg = x.reshape(N // span, span, C, H, Wd)
  mean, var = xg.mean((1, 3, 4), keepdims=True), xg.var((1, 3, 4), keepdims=True)
  n = span * H * Wd
  stats[p] = (0.9 * W[p + ".running_mean"] + 0.1 * mean.mean(0).ravel(), 0.9 * W[p + ".running_var"] + 0.1 * var.mean(0).ravel() * n / (n - 1))
  return ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * g + b


def np_maxpool(x):
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  H, W = x.shape[2:]
  OH, OW = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1
  return np.max([xp[:, :, i:i + 2 * (OH - 1) + 1:2, j:j + 2 * (OW - 1) + 1:2] for i in range(3) for j in range(3)], 0)


def np_resnet(sd, cfg, x, train=False):
  W = {k: v.numpy().astype(np.float64) for k, v in sd.items()}
  stats = {}
  relu = lambda a: np.maximum(a, 0)
  bn = lambda a, p: np_bn(a, W, p, train, stats, cfg.bn_span)
  h = np_maxpool(relu(bn(np_conv(x, W["conv1.weight"], 2, 3), "bn1")))
  for i, n in enumerate(cfg.layers):
    for j in range(n):
      p = f"layer{i + 1}.{j}."
      s = 2 if (j == 0 and i > 0) else 1
      a = relu(bn(np_conv(h, W[p + "conv1.weight"]), p + "bn1"))
      a = relu(bn(np_conv(a, W[p + "conv2.weight"], s, 1), p + "bn2"))
      a = bn(np_conv(a, W[p + "conv3.weight"]), p + "bn3")
      sc = bn(np_conv(h, W[p + "downsample.0.weight"], s), p + "downsample.1") if p + "downsample.0.weight" in W else h
      h = relu(a + sc)
  return h.mean((2, 3)) @ W["fc.weight"].T + W["fc.bias"], stats


def randomize(model, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for n, t in model.state_dict().items():
    if n.endswith("num_batches_tracked"): sd[n] = np.array(0, np.int64)
    elif n.endswith("running_var"): sd[n] = rng.uniform(0.5, 2.0, t.shape).astype(np.float32)
    elif n.endswith("running_mean") or n.endswith("bias"): sd[n] = (0.1 * rng.standard_normal(t.shape)).astype(np.float32)
    elif n.endswith("weight") and t.ndim == 1: sd[n] = rng.uniform(0.5, 1.5, t.shape).astype(np.float32)
    else: sd[n] = (rng.standard_normal(t.shape) * np.sqrt(2.0 / np.prod(t.shape[1:]))).astype(np.float32)
  model.load_state_dict(sd)


def test_resnet50_structure():
  cfg = RESNET50
  assert cfg.layers == (3, 4, 6, 3) and cfg.num_classes == 1000
  m = ResNet(tiny_config(layers=(2, 1)))
  sd = m.state_dict()
  for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
            "layer1.1.bn3.weight", "layer2.0.conv2.weight", "fc.weight", "fc.bias"):
    assert k in sd, k
  assert "layer1.1.downsample.0.weight" not in sd
  # v1.5: the stride is on the 3x3 conv; check the spatial size through layer2
  assert sd["layer2.0.conv2.weight"].shape[-1] == 3
  z = ResNet(tiny_config(zero_init_residual=True)).state_dict()
  assert np.all(z["layer1.0.bn3.weight"].numpy() == 0) and np.all(z["layer1.0.bn2.weight"].numpy() == 1)


@pytest.mark.parametrize("train,span", [(False, None), (True, None), (True, 2)])
def test_logits_match_numpy_float64(train, span):
  """span: batch norm over groups of that many samples (MLPerf's model_bn_span) in training."""
  cfg = tiny_config(bn_span=span)
  m = ResNet(cfg)
  randomize(m)
  x = np.random.default_rng(1).standard_normal((6 if span else 3, 3, 20, 20)).astype(np.float32)
  ref, stats = np_resnet(m.state_dict(), cfg, x.astype(np.float64), train)
  m.train(train)
  got = m(Tensor(x)).numpy()
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  sd = m.state_dict()
  if train:
    for p, (rm, rv) in stats.items():
      np.testing.assert_allclose(sd[p + ".running_mean"].numpy(), rm, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(sd[p + ".running_var"].numpy(), rv, rtol=1e-4, atol=1e-5)
      assert int(sd[p + ".num_batches_tracked"].numpy()) == 1


@pytest.mark.parametrize("span", [None, 2])
def test_finite_difference_gradients(span):
  cfg = tiny_config(bn_span=span)
  m = ResNet(cfg)
  randomize(m, seed=2)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
  y = rng.integers(0, cfg.num_classes, 4).astype(np.int32)
  m.train()
  loss = m.loss(Tensor(x), Tensor(y)); loss.backward()
  sd = m.state_dict()
  for name, idx in [("conv1.weight", (1, 2, 3, 3)), ("layer1.0.conv2.weight", (2, 1, 1, 0)), ("layer2.0.bn1.weight", (3,)),
                    ("layer2.0.downsample.0.weight", (5, 2, 0, 0)), ("fc.weight", (4, 7)), ("fc.bias", (2,))]:
    g = sd[name].grad.numpy()[idx]
    W = {k: v.numpy().astype(np.float64) for k, v in sd.items()}
    # the forward updated the running stats; the numpy reference in train mode doesn't read them
    def f(d):
      W2 = dict(W); w = W2[name].copy(); w[idx] += d; W2[name] = w
      lg, _ = np_resnet({k: _Arr(v) for k, v in W2.items()}, cfg, x.astype(np.float64), train=True)
      lg = lg - lg.max(-1, keepdims=True)
      return -(lg[np.arange(4), y] - np.log(np.exp(lg).sum(-1))).mean()
    fd = (f(1e-5) - f(-1e-5)) / 2e-5
    assert abs(g - fd) < 1e-3 + 1e-2 * abs(fd), (name, g, fd)


class _Arr:
  def __init__(self, a): self.a = a
  def numpy(self): return self.a


@pytest.mark.parametrize("opt_name", ["sgd", "lars"])
def test_overfits_fixed_batch_with_jit(opt_name):
  Tensor.manual_seed(0)
  cfg = tiny_config()
  m = ResNet(cfg).train()
  params = m.named_parameters()
  opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True) if opt_name == "sgd" else LARS(params, lr=2.0, momentum=0.9, weight_decay=1e-4, eta=0.01)
  rng = np.random.default_rng(4)
  X = Tensor(rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
  Y = Tensor(rng.integers(0, cfg.num_classes, 8).astype(np.int32))

  @jit
  def step(x, y):
    opt.zero_grad()
    loss = m.loss(x, y)
    loss.backward()
    opt.step()
    return loss

  losses = [step(X, Y).item() for _ in range(60)]
  assert losses[0] > 1.5 and losses[-1] < 0.05, losses[::6]
  # the running stats kept moving under replay (BN buffers updated with assign inside the jitted step)
  assert int(m.bn1.num_batches_tracked.numpy()) == 60
  m.eval()
  assert (m(X).numpy().argmax(-1) == Y.numpy()).mean() >= 0.5   # eval mode (running stats): well above chance, not exact


def test_init_is_the_references_he_normal_and_dense_normal():
  """The reference (image_classification/tensorflow2/resnet_model.py): every conv kernel is Keras he_normal (a normal
  truncated at 2 std whose std after truncation is sqrt(2 / fan_in), fan_in = in_channels * kh * kw), the fc1000 kernel
  RandomNormal(stddev=0.01) with a zero bias."""
  Tensor.manual_seed(1)
  sd = ResNet(tiny_config(layers=(1, 1), widths=(32, 64), stem_width=32)).state_dict()
  convs = {k: v.numpy().astype(np.float64) for k, v in sd.items() if v.ndim == 4}
  for name, w in convs.items():
    fan_in = np.prod(w.shape[1:])
    std = np.sqrt(2.0 / fan_in)
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6), name
    if w.size >= 4096:
      assert abs(w.std() / std - 1) < 0.05 and abs(w.mean()) < 5 * std / np.sqrt(w.size), (name, w.std(), std)
  assert convs["layer2.0.conv3.weight"].shape[:2] == (256, 64)   # fan_in 64 != fan_out 256: the mode matters
  fc = sd["fc.weight"].numpy().astype(np.float64)
  assert abs(fc.std() / 0.01 - 1) < 0.05 and np.abs(fc).max() > 2.5 * 0.01   # untruncated
  assert np.all(sd["fc.bias"].numpy() == 0)
