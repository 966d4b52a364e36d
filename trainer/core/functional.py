"""Neural-network ops composed from the Tensor API: convolution, pooling, normalisation, attention
and losses. They are attached to Tensor as methods (x.conv2d(w), x.cross_entropy(y), ...)."""
from __future__ import annotations
import math
from .tensor import Tensor, TensorError, _ramp, _shape_str, where
from .dtypes import dtypes, promote
from .function import Function
from .lazy import LazyBuffer
from .ops import Op


def _pair(x): return (x, x) if isinstance(x, int) else tuple(x)


class Windows(Function):
  """x (..., H, W) -> (..., OH, OW, kh, kw): every output position's window (LazyBuffer.windows: a view, no copy).
  Backward: each tap's gradient goes back where the tap read (_place_taps)."""
  def forward(self, x: LazyBuffer, kernel, stride, dilation):
    self.shape, self.kernel, self.stride, self.dilation = x.shape, kernel, stride, dilation
    return x.windows(kernel, stride, dilation)

  def backward(self, g: LazyBuffer):
    keep = tuple((0, n) for n in g.shape[:-2])
    return _place_taps(lambda i, j: g.shrink(keep + ((i, i + 1), (j, j + 1))).reshape(g.shape[:-2]), self.shape, self.kernel, self.stride, self.dilation)


class MaxPool(Function):
  """The largest value of each window of x (padded already), read through a window view. Backward: each window's
  gradient goes to one tap, the first maximum of the window in row-major order or its last NaN, as torch's max_pool2d
  backward (aten/src/ATen/native/cpu/MaxPoolKernel.cpp keeps the index where `val > maxval || isnan(val)` last held),
  placed back tap by tap (_place_taps): one kernel of the taps' masks and the gradient, no window-sized intermediate."""
  def forward(self, x: LazyBuffer, kernel, stride, dilation):
    if x.view.mask is not None: x = x.contiguous()   # a padded input copied once, read by forward and backward
    self.x, self.kernel, self.stride, self.dilation = x, kernel, stride, dilation
    win = x.windows(kernel, stride, dilation)
    self.out = win.reduce(Op.RMAX, (len(win.shape) - 2, len(win.shape) - 1)).reshape(win.shape[:-2])
    return self.out

  def backward(self, g: LazyBuffer):
    win, (kh, kw) = self.x.windows(self.kernel, self.stride, self.dilation), self.kernel
    keep, zero = tuple((0, n) for n in g.shape), g.const_like(0)
    # rank of tap t = i*kw + j: kh*kw - t where it holds the window's maximum, kh*kw + 1 + t where it is NaN, else 0;
    # the tap of the largest rank takes the gradient
    K, const = kh * kw, lambda v: g.const_like(v, dtypes.int32)
    def rank(i, j):
      v = win.shrink(keep + ((i, i + 1), (j, j + 1))).reshape(g.shape)
      return v.alu(Op.CMPEQ, self.out).alu(Op.WHERE, const(K - i * kw - j), v.alu(Op.CMPEQ, v).alu(Op.WHERE, const(0), const(K + 1 + i * kw + j)))
    first = rank(0, 0)
    for t in range(1, K): first = first.alu(Op.MAX, rank(*divmod(t, kw)))
    first = first.contiguous(stored=True)   # stored once (an int per output), not redone by each of the kh*kw taps that read it
    tap = lambda i, j: rank(i, j).alu(Op.CMPEQ, first).alu(Op.WHERE, g, zero)
    return _place_taps(tap, self.x.shape, self.kernel, self.stride, self.dilation)


def _place_taps(tap, shape, kernel, stride, dilation) -> LazyBuffer:
  """The gradient of (..., H, W) from each tap's gradient, tap(i, j) of shape (..., OH, OW): each goes back where the
  tap read. With a stride s, input row h = q*s + r takes tap i's gradient of output row q - (i*d) // s when
  (i*d) % s == r, so the result, seen as (..., H/s, s, W/s, s), is a sum of shifted views of the taps: one kernel,
  nothing spread out in memory first."""
  *lead, H, W = shape
  (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
  out, keep = None, tuple((0, n) for n in lead)
  for i in range(kh):
    for j in range(kw):
      t = tap(i, j)
      OH, OW = t.shape[-2:]
      Hq, Wq = -(-H // sh), -(-W // sw)
      (qi, ri), (qj, rj) = divmod(i * dh, sh), divmod(j * dw, sw)
      t = t.reshape((*lead, OH, 1, OW, 1))
      t = t.pad(tuple((0, 0) for _ in lead) + ((qi, Hq - OH - qi), (ri, sh - 1 - ri), (qj, Wq - OW - qj), (rj, sw - 1 - rj)))
      out = t if out is None else out.alu(Op.ADD, t)
  return out.reshape((*lead, Hq * sh, Wq * sw)).shrink(keep + ((0, H), (0, W)))


def _windows(x: Tensor, kernel, stride, dilation) -> Tensor:
  """(..., H, W) -> (..., OH, OW, kh, kw): every window, as a view."""
  _window_shape(x.shape[-2:], kernel, stride, dilation)
  return Windows.apply(x, kernel=kernel, stride=stride, dilation=dilation)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
  """x (N, C, H, W), weight (O, C/groups, kh, kw) -> (N, O, OH, OW), as torch.nn.functional.conv2d (padding an int,
  a pair, 'valid' or 'same')."""
  if x.ndim != 4 or weight.ndim != 4: raise ValueError(f"conv2d: expected 4-d input and weight, got {_shape_str(x.shape)} and {_shape_str(weight.shape)}")
  N, C, H, W = x.shape
  O, Cg, kh, kw = weight.shape
  if C != Cg * groups or O % groups:
    raise ValueError(f"conv2d: input {_shape_str(x.shape)} and weight {_shape_str(weight.shape)} do not match with groups={groups}")
  dt = promote(x.dtype, weight.dtype)
  x = x.cast(dt).pad(((0, 0), (0, 0)) + _conv_padding(padding, (kh, kw), _pair(stride), _pair(dilation)))
  _window_shape(x.shape[-2:], (kh, kw), _pair(stride), _pair(dilation))
  out = Conv.apply(x, weight.cast(dt), stride=_pair(stride), dilation=_pair(dilation), groups=groups)
  return out + bias.reshape(1, O, 1, 1) if bias is not None else out


class Conv(Function):
  """conv2d of an already padded input as one contraction over a window view of it (LazyBuffer.windows): a
  matrix product whose K is channel x kernel row x kernel column, read where the input lies (no window matrix).
    out[n, g, o, y, x] = sum_{c, i, j} xp[n, g, c, y*sh + i*dh, x*sw + j*dw] * w[g, o, c, i, j]
  Gradients, as contractions too: the weight's sums the output gradient times the same windows over (n, y, x);
  the input's is made of stride-1 convolutions of the output gradient with the kernel's taps flipped and its
  in/out channels swapped, one per residue of the stride (_conv_input_grad)."""
  def forward(self, x: LazyBuffer, w: LazyBuffer, stride, dilation, groups):
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    if x.view.mask is not None: x = x.contiguous()   # a padded input copied once, read by forward and backward
    self.x, self.w, self.stride, self.dilation, self.groups = x, w, stride, dilation, groups
    xw = x.windows((kh, kw), stride, dilation)                                   # N, C, OH, OW, kh, kw
    OH, OW = xw.shape[2:4]
    G, Og = groups, O // groups
    xw = xw.reshape((N, G, 1, Cg, OH, OW, kh, kw)).permute((0, 1, 2, 4, 5, 3, 6, 7)).expand((N, G, Og, OH, OW, Cg, kh, kw))
    wv = w.reshape((1, G, Og, 1, 1, Cg, kh, kw)).expand((N, G, Og, OH, OW, Cg, kh, kw))
    return xw.alu(Op.MUL, wv).reduce(Op.SUM, (5, 6, 7)).reshape((N, O, OH, OW))

  def backward(self, g: LazyBuffer):
    x, w, G = self.x, self.w, self.groups
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    Og, (OH, OW) = O // G, g.shape[2:]
    gx = gw = None
    if self.needs_input_grad[1]:
      xw = x.windows((kh, kw), self.stride, self.dilation).reshape((N, G, Cg, OH, OW, kh, kw)).permute((1, 2, 5, 6, 0, 3, 4))
      xw = xw.reshape((G, 1, Cg, kh, kw, N, OH, OW)).expand((G, Og, Cg, kh, kw, N, OH, OW))
      gv = g.reshape((N, G, Og, OH, OW)).permute((1, 2, 0, 3, 4)).reshape((G, Og, 1, 1, 1, N, OH, OW)).expand(xw.shape)
      gw = gv.alu(Op.MUL, xw).reduce(Op.SUM, (5, 6, 7)).reshape(w.shape)
    if self.needs_input_grad[0]: gx = _conv_input_grad(g, w, x.shape, self.stride, self.dilation, G)
    return gx, gw


def _phases(k: int, s: int, d: int) -> list:
  """The taps of a kernel of k taps (dilation d) that reach the input positions of each residue r modulo the
  stride s: (first tap, number of taps, tap step, first and last offset in output positions, offset step), None
  for a residue no tap reaches."""
  out = []
  for r in range(s):
    taps = [i for i in range(k) if i * d % s == r]
    a = [i * d // s for i in taps]
    out.append((taps[0], len(taps), taps[1] - taps[0] if len(taps) > 1 else 1, a[0], a[-1], a[1] - a[0] if len(a) > 1 else 1) if taps else None)
  return out


def _conv_input_grad(g: LazyBuffer, w: LazyBuffer, shape, stride, dilation, groups) -> LazyBuffer:
  """The gradient of a convolution's (padded) input: input row h = q*s + r gets, from each tap i with i*d = r
  (mod s), the output gradient of row q - (i*d) // s; so each residue (r, t) of the stride is a stride-1
  convolution of the output gradient with those taps, flipped (no product with the zeros a spread gradient would
  have), and the residues interleave into the result. One padded copy of the gradient serves them all."""
  N, C, H, W = shape
  O, Cg, kh, kw = w.shape
  (sh, sw), (dh, dw), G, Og = stride, dilation, groups, O // groups
  OH, OW = g.shape[2:]
  Hq, Wq = -(-H // sh), -(-W // sw)
  rows, cols = _phases(kh, sh, dh), _phases(kw, sw, dw)
  before = (max(p[4] for p in rows if p), max(p[4] for p in cols if p))
  after = (max(0, max(Hq - p[3] for p in rows if p) - OH), max(0, max(Wq - p[3] for p in cols if p) - OW))
  gp = g.pad(((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])))
  if gp.view.mask is not None: gp = gp.contiguous()
  out = None
  for r, pr in enumerate(rows):
    for t, pc in enumerate(cols):
      if pr is None or pc is None: continue
      (i0, n, li, _, ai, di), (j0, m, lj, _, aj, dj) = pr, pc
      y0, x0 = before[0] - ai, before[1] - aj
      gv = gp.shrink(((0, N), (0, O), (y0, y0 + Hq + (n - 1) * di), (x0, x0 + Wq + (m - 1) * dj)))
      gwin = gv.windows((n, m), (1, 1), (di, dj)).reshape((N, G, 1, Og, Hq, Wq, n, m)).permute((0, 1, 2, 4, 5, 3, 6, 7))
      gwin = gwin.expand((N, G, Cg, Hq, Wq, Og, n, m))
      taps = w.shrink(((0, O), (0, Cg), (i0, i0 + (n - 1) * li + 1), (j0, j0 + (m - 1) * lj + 1))).windows((n, m), (1, 1), (li, lj))
      taps = taps.reshape((G, Og, Cg, n, m)).flip((3, 4)).permute((0, 2, 1, 3, 4)).reshape((1, G, Cg, 1, 1, Og, n, m)).expand(gwin.shape)
      part = gwin.alu(Op.MUL, taps).reduce(Op.SUM, (5, 6, 7)).reshape((N, C, Hq, 1, Wq, 1))
      part = part.pad(((0, 0), (0, 0), (0, 0), (r, sh - 1 - r), (0, 0), (t, sw - 1 - t)))
      out = part if out is None else out.alu(Op.ADD, part)
  return out.reshape((N, C, Hq * sh, Wq * sw)).shrink(((0, N), (0, C), (0, H), (0, W)))


def _window_shape(size, kernel, stride, dilation) -> tuple:
  """(OH, OW) of a window over an input of `size`; an error where the window does not fit."""
  (H, W), (kh, kw), (sh, sw), (dh, dw) = size, kernel, stride, dilation
  oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
  if oh <= 0 or ow <= 0: raise ValueError(f"window {kernel} with dilation {dilation} does not fit input of size {(H, W)}")
  return oh, ow


def _conv_padding(padding, kernel, stride, dilation) -> tuple:
  """((top, bottom), (left, right)) for conv2d's padding; 'same' puts the odd one of a split at the end, as torch."""
  if padding == "valid": return ((0, 0), (0, 0))
  if padding == "same":
    if stride != (1, 1): raise ValueError("conv2d: padding='same' needs stride 1")
    return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
  if isinstance(padding, str): raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
  return tuple((p, p) for p in _pair(padding))


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1) -> Tensor:
  k = _pair(kernel_size)
  ph, pw = _pair(padding)
  if ph or pw: x = x.pad(((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)), value=float("-inf"))
  s, d = _pair(stride if stride is not None else k), _pair(dilation)
  _window_shape(x.shape[-2:], k, s, d)
  return MaxPool.apply(x, kernel=k, stride=s, dilation=d)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
  """Average over each window; padding counts as zeros (torch's count_include_pad=True)."""
  k = _pair(kernel_size)
  ph, pw = _pair(padding)
  if ph or pw: x = x.pad(((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw)))
  return _windows(x, k, _pair(stride if stride is not None else k), (1, 1)).mean((-2, -1))


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
  axes = tuple(range(x.ndim - len(_pair(normalized_shape) if not isinstance(normalized_shape, int) else (normalized_shape,)), x.ndim))
  xf = x.float()   # statistics in float32 (stored, they would round to a 16-bit input type)
  mean = xf.mean(axes, keepdim=True)
  d = xf - mean
  out = d * ((d * d).mean(axes, keepdim=True) + eps).rsqrt()
  if weight is not None: out = out * weight
  if bias is not None: out = out + bias
  return out.cast(x.dtype)


def rms_norm(x: Tensor, normalized_shape, weight=None, eps=None) -> Tensor:
  """x / sqrt(mean(x^2) + eps) * weight over the last len(normalized_shape) axes, computed in float32 (torch's
  F.rms_norm; eps None is the machine epsilon of x's dtype)."""
  if not isinstance(normalized_shape, (int, tuple, list)):
    raise TypeError(f"rms_norm: normalized_shape must be an int or a tuple of ints, got {type(normalized_shape).__name__} (the order is input, normalized_shape, weight, eps)")
  n = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
  if tuple(x.shape[x.ndim - n:]) != ((normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)):
    raise TensorError(f"rms_norm: normalized_shape {normalized_shape} does not match the last axes of {_shape_str(x.shape)}")
  axes = tuple(range(x.ndim - n, x.ndim))
  xf = x.float()   # statistics in float32 (stored, they would round to a 16-bit input type)
  out = xf * ((xf * xf).mean(axes, keepdim=True) + (EPS[x.dtype.name] if eps is None else eps)).rsqrt()
  out = out.cast(x.dtype)
  return out * weight if weight is not None else out


EPS = {"float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}   # torch.finfo(dtype).eps


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False) -> Tensor:
  """torch's F.scaled_dot_product_attention: query (..., H, T, D), key/value (..., Hkv, S, D); Hkv == H, or with
  enable_gqa a divisor of H (grouped-query heads share key/value). attn_mask broadcasts to (..., H, T, S) as torch's:
  bool (True takes part) or a float added to the scores. is_causal masks keys after the query (s <= t, the upper-left
  triangle for T != S, as torch). dropout_p drops attention weights whenever it is > 0 (torch's function does not look
  at a training flag either). A row that sees no key gives zeros, as torch's. The fused kernels (CUDA, CPU) run when
  attention.covers() the call (no mask, no dropout); everything else composes primitive ops."""
  q, k, v = query, key, value
  *b, H, T, D = q.shape
  Hkv, S = k.shape[-3], k.shape[-2]
  if k.shape[:-1] != v.shape[:-1] or k.shape[-1] != D or tuple(k.shape[:-3]) != tuple(b):
    raise TensorError(f"scaled_dot_product_attention: query {_shape_str(q.shape)}, key {_shape_str(k.shape)}, value {_shape_str(v.shape)} do not fit")
  if (H != Hkv and not enable_gqa) or H % Hkv:
    raise TensorError(f"scaled_dot_product_attention: {H} query heads and {Hkv} key/value heads" + ("" if enable_gqa else " need enable_gqa=True"))
  if attn_mask is not None and is_causal: raise TensorError("scaled_dot_product_attention: pass attn_mask or is_causal, not both")
  from .kernels import attention
  from . import precision
  precision.note("attention", q.dtype)
  if attention.covers(q, k, v, attn_mask, scale, dropout_p, is_causal): return attention.flash_attention(q, k, v, is_causal, scale)
  rep = H // Hkv
  qg = q.reshape(*b, Hkv, rep, T, D)
  s = (qg @ k.unsqueeze(-3).transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(D))   # ..., Hkv, rep, T, S
  if is_causal: s = s.where(_ramp(T, q.device).reshape(T, 1) >= _ramp(S, q.device).reshape(1, S), float("-inf"))   # every row sees key 0
  if attn_mask is None: p = s.softmax(-1)
  else:                 # a mask may leave a row no key: its weights are zeros, not NaN
    m = _heads_grouped(attn_mask, len(b), H, Hkv)
    s = s.where(m, float("-inf")) if m.dtype is dtypes.bool else s + m
    top = s.amax(-1, keepdim=True).detach()
    e = (s - where(top == float("-inf"), 0.0, top)).exp()
    total = e.sum(-1, keepdim=True)
    p = e / where(total == 0, 1.0, total)
  if dropout_p > 0: p = p.where(Tensor.rand(*p.shape, device=p.device) >= dropout_p, 0.0) * (1 / (1 - dropout_p))
  out = p.cast(v.dtype) @ v.unsqueeze(-3)
  return out.reshape(*b, H, T, v.shape[-1])


def _heads_grouped(mask: Tensor, batch_dims: int, H: int, Hkv: int) -> Tensor:
  """A mask that broadcasts to (*batch, H, T, S), reshaped to broadcast to the grouped scores (*batch, Hkv, H/Hkv, T, S)."""
  if mask.ndim > batch_dims + 3: raise TensorError(f"scaled_dot_product_attention: attn_mask {_shape_str(mask.shape)} has more axes than the scores")
  m = mask.reshape((1,) * (batch_dims + 3 - mask.ndim) + tuple(mask.shape))
  lead, heads, ts = m.shape[:-3], m.shape[-3], m.shape[-2:]
  if heads == 1: return m.reshape(*lead, 1, 1, *ts)
  if heads != H: raise TensorError(f"scaled_dot_product_attention: attn_mask {_shape_str(mask.shape)} has {heads} heads, the query {H}")
  return m.reshape(*lead, Hkv, H // Hkv, *ts)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
  """Integer one-hot vectors (int32); num_classes -1 is the largest value + 1, which realizes the tensor."""
  if num_classes < 0: num_classes = int(tensor.amax().item()) + 1
  return (tensor.unsqueeze(-1) == _ramp(num_classes, tensor.device).reshape((1,) * tensor.ndim + (num_classes,))).cast(dtypes.default_int)


REDUCTIONS = ("none", "mean", "sum")


def _reduction(reduction):
  if reduction not in REDUCTIONS: raise ValueError(f"{reduction} is not a valid value for reduction")
  return reduction


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0) -> Tensor:
  """torch's F.cross_entropy: input (C), (N, C) or (N, C, d1, ...) logits, classes on axis 1; target class indices of
  the other axes' shape, or class probabilities of input's shape. weight (C) weighs each class; 'mean' divides by the
  summed weights of the targets that are not ignore_index (by N for probabilities); label_smoothing mixes in the
  uniform distribution, as torch's."""
  _reduction(reduction)
  x = input.movedim(1, -1) if input.ndim > 2 else input        # classes last
  C = x.shape[-1]
  logp = x.float().log_softmax(-1)
  w = weight._float() if weight is not None else None
  if target.dtype.is_float:
    if target.shape != input.shape: raise ValueError(f"cross_entropy: probability targets {_shape_str(target.shape)} need the shape of input {_shape_str(input.shape)}")
    p = (target.movedim(1, -1) if input.ndim > 2 else target) * (1 - label_smoothing) + label_smoothing / C
    loss = -(logp * p * w if w is not None else logp * p).sum(-1)
    if reduction == "mean": return loss.sum() * (1 / max(1, loss.numel()))
    return loss.sum() if reduction == "sum" else loss
  want = (input.shape[:1] + input.shape[2:]) if input.ndim >= 2 else ()
  if tuple(target.shape) != tuple(want):
    raise ValueError(f"cross_entropy: input {_shape_str(input.shape)} (classes on axis 1) needs class targets of shape {_shape_str(want)}, got {_shape_str(target.shape)}")
  hit = target.unsqueeze(-1) == _ramp(C, input.device).reshape((1,) * target.ndim + (C,))
  keep = target != ignore_index
  wt = (w.where(hit, 0.0).sum(-1) if w is not None else Tensor.ones(*target.shape, device=input.device)).where(keep, 0.0)   # each target's weight
  loss = -(logp.where(hit, 0.0).sum(-1)) * wt
  if label_smoothing:
    smooth = -(logp * w if w is not None else logp).sum(-1).where(keep, 0.0)
    loss = (1 - label_smoothing) * loss + (label_smoothing / C) * smooth
  if reduction == "none": return loss
  if reduction == "sum": return loss.sum()
  return loss.sum() / wt.sum()


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction="mean", pos_weight: Tensor | None = None) -> Tensor:
  """torch's F.binary_cross_entropy_with_logits: -(pos_weight * y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))) * weight,
  in the stable form with softplus."""
  _reduction(reduction)
  if target.shape != input.shape: raise ValueError(f"binary_cross_entropy_with_logits: target {_shape_str(target.shape)} needs the shape of input {_shape_str(input.shape)}")
  x = input.float()
  softplus_neg = x.maximum(0) - x + (1 + (-x.abs()).exp()).log()     # log(1 + exp(-x)) = -log sigmoid(x)
  loss = (pos_weight * target if pos_weight is not None else target) * softplus_neg + (1 - target) * (softplus_neg + x)
  if weight is not None: loss = loss * weight
  if reduction == "none": return loss
  return loss.sum() if reduction == "sum" else loss.mean()


for _f in (conv2d, max_pool2d, avg_pool2d, layer_norm, rms_norm, scaled_dot_product_attention, one_hot, cross_entropy, binary_cross_entropy_with_logits):
  setattr(Tensor, _f.__name__, _f)
