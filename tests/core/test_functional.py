"""The composed nn ops (functional.py) against float64 numpy references, forward and gradients:
conv2d (stride, padding, dilation, groups), max/avg pooling, layer_norm, rms_norm, attention (causal,
grouped-query heads, masks), cross entropy (label smoothing, ignore index), one_hot."""
import numpy as np
import pytest
from trainer.core import Tensor
from opcheck import check, rnd


def np_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
  N, C, H, W = x.shape
  O, Cg, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  OH = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
  OW = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((N, O, OH, OW))
  og = O // groups
  for g in range(groups):
    for i in range(OH):
      for j in range(OW):
        patch = xp[:, g * Cg:(g + 1) * Cg, i * stride: i * stride + dilation * (kh - 1) + 1: dilation, j * stride: j * stride + dilation * (kw - 1) + 1: dilation]
        out[:, g * og:(g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, w[g * og:(g + 1) * og])
  return out + (b.reshape(1, O, 1, 1) if b is not None else 0)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (1, 1, 1, 4)])
def test_conv2d(stride, padding, dilation, groups):
  x, w, b = rnd(2, 4, 7, 9, seed=1), rnd(4, 4 // groups, 3, 3, seed=2), rnd(4, seed=3)
  check(lambda x, w, b: np_conv2d(x, w, b, stride, padding, dilation, groups),
        lambda x, w, b: x.conv2d(w, b, stride=stride, padding=padding, dilation=dilation, groups=groups), x, w, b)


def test_conv2d_odd_shapes():
  """Uneven kernel, stride and dilation per axis (the input gradient's stride residues, some reached by no tap)."""
  x, w = rnd(2, 3, 9, 8, seed=10), rnd(4, 3, 3, 2, seed=11)
  check(lambda x, w: np_conv2d_hw(x, w, (2, 3), (1, 2), (2, 1)),
        lambda x, w: x.conv2d(w, stride=(2, 3), padding=(1, 2), dilation=(2, 1)), x, w, views=["s", "T"])


def np_conv2d_hw(x, w, stride, padding, dilation):
  """np_conv2d with a (rows, columns) pair for each of stride, padding and dilation."""
  (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
  xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  kh, kw = w.shape[2:]
  OH, OW = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
  out = np.zeros((x.shape[0], w.shape[0], OH, OW))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, :, i * dh: i * dh + (OH - 1) * sh + 1: sh, j * dw: j * dw + (OW - 1) * sw + 1: sw]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def test_conv2d_low_precision_and_views():
  x, w = rnd(1, 3, 6, 6, seed=4), rnd(2, 3, 3, 3, seed=5)
  check(lambda x, w: np_conv2d(x, w, padding=1), lambda x, w: x.conv2d(w, padding=1), x, w, dtype="bfloat16")
  check(lambda x, w: np_conv2d(x, w), lambda x, w: x.conv2d(w), x, w, views=["f", "c"])


def np_windows(x, k, s):
  N, C, H, W = x.shape
  OH, OW = (H - k) // s + 1, (W - k) // s + 1
  return np.stack([x[:, :, i:i + (OH - 1) * s + 1:s, j:j + (OW - 1) * s + 1:s] for i in range(k) for j in range(k)], 2)


def test_pooling():
  x = rnd(2, 3, 7, 8, seed=6)
  check(lambda x: np_windows(x, 2, 2).max(2), lambda x: x.max_pool2d(2), x)
  check(lambda x: np_windows(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf), 3, 2).max(2),
        lambda x: x.max_pool2d(3, 2, 1), x)
  check(lambda x: np_windows(x, 3, 1).mean(2), lambda x: x.avg_pool2d(3, 1), x)
  check(lambda x: np_windows(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), 2, 2).mean(2), lambda x: x.avg_pool2d(2, 2, 1), x)


def test_norms():
  x, w, b = rnd(3, 5, 11, seed=7), rnd(11, seed=8), rnd(11, seed=9)
  def ln(x, w, b):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b
  check(ln, lambda x, w, b: x.layer_norm(11, w, b), x, w, b)
  check(lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w, lambda x, w: x.rms_norm(w.shape, w, 1e-6), x, w)
  check(lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w, lambda x, w: x.rms_norm(w.shape, w, 1e-6), x, w, dtype="bfloat16", views=["T", "c"])


def np_sdpa(q, k, v, causal, mask=None, scale=None):
  """torch's meaning: causal is the upper-left triangle (key s <= query t); the mask broadcasts to (..., H, T, S), bool
  (True takes part) or added; a row that sees no key is zero."""
  rep = q.shape[-3] // k.shape[-3]
  k, v = np.repeat(k, rep, -3), np.repeat(v, rep, -3)
  s = q @ np.swapaxes(k, -1, -2) * (scale or 1 / np.sqrt(q.shape[-1]))
  T, S = s.shape[-2:]
  if causal: s = np.where(np.arange(T)[:, None] >= np.arange(S)[None], s, -np.inf)
  if mask is not None: s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
  top = s.max(-1, keepdims=True)
  p = np.exp(s - np.where(np.isfinite(top), top, 0))
  total = p.sum(-1, keepdims=True)
  return p / np.where(total == 0, 1, total) @ v


@pytest.mark.parametrize("H,Hkv,T,S,causal", [(4, 4, 5, 5, False), (4, 2, 6, 6, True), (6, 2, 3, 7, True), (2, 1, 7, 3, True)])
def test_attention(H, Hkv, T, S, causal):
  q, k, v = rnd(2, H, T, 8, seed=10), rnd(2, Hkv, S, 8, seed=11), rnd(2, Hkv, S, 8, seed=12)
  check(lambda q, k, v: np_sdpa(q, k, v, causal), lambda q, k, v: q.scaled_dot_product_attention(k, v, is_causal=causal, enable_gqa=H != Hkv), q, k, v)


@pytest.mark.parametrize("mask_shape", [(2, 1, 5, 7), (5, 7), (1, 4, 1, 7), (2, 4, 5, 7), (7,)])
def test_attention_masks_broadcast_as_torch(mask_shape):
  """A (B, 1, T, S) mask lines up with the batch axis, never the kv-head one (here B == Hkv == 2), bool or additive."""
  q, k, v = rnd(2, 4, 5, 8, seed=20), rnd(2, 2, 7, 8, seed=21), rnd(2, 2, 7, 8, seed=22)
  r = np.random.default_rng(23)
  bool_mask = r.random(mask_shape) > 0.4
  grad = mask_shape == (2, 1, 5, 7)      # gradients once: the mask's shape changes no gradient rule
  check(lambda q, k, v: np_sdpa(q, k, v, False, bool_mask), lambda q, k, v: q.scaled_dot_product_attention(k, v, Tensor(bool_mask), enable_gqa=True), q, k, v, grad=grad)
  add_mask = r.uniform(-3, 1, mask_shape)
  check(lambda q, k, v: np_sdpa(q, k, v, False, add_mask), lambda q, k, v: q.scaled_dot_product_attention(k, v, Tensor(add_mask), enable_gqa=True), q, k, v, grad=grad)


def test_attention_bool_mask_with_empty_rows_scale_and_bf16():
  q, k, v = rnd(1, 2, 4, 8, seed=13), rnd(1, 2, 4, 8, seed=14), rnd(1, 2, 4, 8, seed=15)
  mask = np.random.default_rng(0).random((4, 4)) > 0.3
  mask[1] = False                                  # query 1 sees no key: zeros, as torch
  out = check(lambda q, k, v: np_sdpa(q, k, v, False, mask, 0.3), lambda q, k, v: q.scaled_dot_product_attention(k, v, attn_mask=Tensor(mask), scale=0.3), q, k, v)
  assert np.all(out.numpy()[:, :, 1] == 0)
  check(lambda q, k, v: np_sdpa(q, k, v, True), lambda q, k, v: q.scaled_dot_product_attention(k, v, is_causal=True), q, k, v, dtype="bfloat16")


def test_attention_dropout():
  """With v the identity the output is the attention weights: each one dropped (0) or kept and scaled by 1/(1-p)."""
  q, k = rnd(2, 2, 16, 8, seed=24), rnd(2, 2, 32, 8, seed=25)
  v = np.broadcast_to(np.eye(32), (2, 2, 32, 32))
  p = np_sdpa(q, k, v, False)
  Tensor.manual_seed(1)
  out = Tensor(q).scaled_dot_product_attention(Tensor(k), Tensor(v), dropout_p=0.25).numpy()
  kept = out != 0
  np.testing.assert_allclose(out[kept], p[kept] / 0.75, rtol=1e-5)
  assert 0.2 < 1 - kept.mean() < 0.3
  np.testing.assert_allclose(Tensor(q).scaled_dot_product_attention(Tensor(k), Tensor(v)).numpy(), p, rtol=1e-5, atol=1e-6)   # dropout_p 0: none


def test_attention_errors_as_torch():
  q, k = Tensor(rnd(1, 4, 3, 8)), Tensor(rnd(1, 2, 3, 8))
  with pytest.raises(RuntimeError, match="enable_gqa"): q.scaled_dot_product_attention(k, k)
  with pytest.raises(RuntimeError, match="attn_mask or is_causal"): q.scaled_dot_product_attention(k, k, Tensor(np.ones((3, 3), bool)), is_causal=True, enable_gqa=True)
  with pytest.raises(RuntimeError, match="3 heads"): q.scaled_dot_product_attention(k, k, Tensor(np.ones((3, 3, 3), bool)), enable_gqa=True)
  with pytest.raises(TypeError): q.scaled_dot_product_attention(k, k, None, 0.0, False, 0.5)      # scale is keyword-only, as torch


def np_cross_entropy(z, target, weight=None, ignore_index=-100, reduction="mean", smoothing=0.0):
  """torch's F.cross_entropy with class-index targets, classes on axis 1, in float64."""
  z = np.moveaxis(z, 1, -1) if z.ndim > 2 else z
  C = z.shape[-1]
  lp = z - z.max(-1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  w = np.ones(C) if weight is None else weight
  keep = target != ignore_index
  t = np.where(keep, target, 0)
  wt = w[t] * keep
  nll = -np.take_along_axis(lp, t[..., None], -1)[..., 0] * wt
  smooth = -(lp * w).sum(-1) * keep
  loss = (1 - smoothing) * nll + smoothing / C * smooth
  if reduction == "none": return loss
  return loss.sum() if reduction == "sum" else loss.sum() / wt.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(smoothing):
  logits = rnd(7, 13, seed=16, lo=-4, hi=4)
  target = np.array([0, 12, 5, -100, 3, 3, 7])
  check(lambda z: np_cross_entropy(z, target, smoothing=smoothing), lambda z: z.cross_entropy(Tensor(target), label_smoothing=smoothing), logits)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_classes_on_axis_1_weights_and_ignore_index(reduction):
  logits = rnd(3, 5, 4, seed=26, lo=-3, hi=3)                   # (N, C, d): classes on axis 1, as torch
  target = np.array([[0, 4, 2, 1], [3, 3, 9, 0], [1, 2, 4, 9]])  # 9 is ignored here
  weight = np.random.default_rng(27).uniform(0.2, 2.0, 5)
  for smoothing in (0.0, 0.2):
    check(lambda z, w: np_cross_entropy(z, target, w, 9, reduction, smoothing),
          lambda z, w: z.cross_entropy(Tensor(target), w, ignore_index=9, reduction=reduction, label_smoothing=smoothing), logits, weight, grad=[True, False])


def test_cross_entropy_probability_targets():
  logits, probs = rnd(6, 5, seed=28), np.random.default_rng(29).dirichlet(np.ones(5), 6)
  def ref(z, smoothing):
    lp = z - z.max(-1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    return -(lp * (probs * (1 - smoothing) + smoothing / 5)).sum() / 6
  check(lambda z: ref(z, 0.0), lambda z: z.cross_entropy(Tensor(probs)), logits)
  check(lambda z: ref(z, 0.3), lambda z: z.cross_entropy(Tensor(probs), label_smoothing=0.3), logits)


def test_binary_cross_entropy_with_logits():
  x, y = rnd(4, 5, seed=30, lo=-6, hi=6), (np.random.default_rng(31).random((4, 5)) > 0.5).astype(np.float64)
  w, pw = np.random.default_rng(32).uniform(0.5, 2, 5), np.random.default_rng(33).uniform(0.5, 3, 5)
  ref = lambda x, red: {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[red](
    -(pw * y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x)))) * w)
  for red in ("mean", "sum", "none"):
    check(lambda x: ref(x, red), lambda x: x.binary_cross_entropy_with_logits(Tensor(y), Tensor(w), reduction=red, pos_weight=Tensor(pw)), x)


def test_cross_entropy_errors_and_one_hot():
  with pytest.raises(ValueError, match=r"cross_entropy: input \(4, 3\) \(classes on axis 1\) needs class targets of shape \(4,\)"):
    Tensor(rnd(4, 3)).cross_entropy(Tensor(np.zeros((4, 1), np.int32)))
  with pytest.raises(ValueError, match="avg is not a valid value for reduction"): Tensor(rnd(4, 3)).cross_entropy(Tensor(np.zeros(4, np.int32)), reduction="avg")
  with pytest.raises(TypeError): Tensor(rnd(4, 3)).cross_entropy(Tensor(np.zeros(4, np.int32)), None, -1)   # only weight is positional, as torch
  idx = np.array([[2, 0], [1, 3]])
  np.testing.assert_array_equal(Tensor(idx).one_hot(4).numpy(), np.eye(4)[idx])
  np.testing.assert_array_equal(Tensor(idx).one_hot().numpy(), np.eye(4)[idx])    # num_classes from the data
  with pytest.raises(ValueError, match="conv2d: input"):
    Tensor(rnd(1, 3, 5, 5)).conv2d(Tensor(rnd(2, 2, 3, 3)))
