"""Optimizers: SGD (momentum, Nesterov), AdamW, LARS; global-norm gradient clipping.

Every update is written with `assign` and realized at the end of `step()`, so a jitted training step
records the update kernels and replays them. The learning rate is a device tensor (`opt.lr`, shape
(1,), float32): set it from Python each step with `opt.set_lr(v)` and a replayed step reads it.
The step number is counted on the host and written to `opt.step_count` at each step (core.jit.each_call, so a
replayed step counts too); AdamW's bias corrections are computed from it in double precision on the host, as
torch's are (python floats), and written with it. Other hyperparameters (betas, weight decay, momentum) are
constants baked into kernels.

Mixed precision: `master_dtype` (default float32) is the type of the optimizer's state. A parameter of
a narrower type (e.g. bfloat16 weights that the matmuls read) gets a master copy in `master_dtype` held
by the optimizer; the update is computed in float32, applied to the master, and its cast is written back
to the parameter. Moments (momentum, Adam's m and v) are kept in `master_dtype` too.

AdamW's update of a float32-state parameter is one hand-written kernel on the CPU and CUDA (core.kernels.adamw:
it reads the master weight, moments and gradient once and writes them back in place with the rounded weight),
the same arithmetic as the primitive-op formulation below, which other devices (and `fused=False`) run.
Global-norm clipping passes its coefficient to `step(grad_scale=...)`, so the clipped gradient is never stored.

`params` is a list of Tensors, a list of (name, Tensor) pairs (e.g. `model.named_parameters()`), or a
dict; names key the optimizer state in `state_dict()` (index numbers when none are given).
"""
from __future__ import annotations
import math
import numpy as np
from ..core import Tensor, dtypes, no_grad
from ..core.jit import each_call
from ..core.kernels.adamw import adamw_update, renders_on
from .module import materialize


def _named(params) -> list[tuple[str, Tensor]]:
  if isinstance(params, dict): items = list(params.items())
  else:
    items = list(params)
    if items and not isinstance(items[0], tuple): items = [(str(i), p) for i, p in enumerate(items)]
  seen, out = set(), []
  for n, p in items:
    if id(p) in seen: continue
    seen.add(id(p)); out.append((n, p))
  return out


def clip_scale(params, max_norm: float, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
  """(total L2 norm over all gradients, min(1, max_norm / (total + eps))), float32 tensors of shape ():
  global-norm clipping's coefficient, for `Optimizer.step(grad_scale=...)`."""
  ps = [p for _, p in _named(params) if p.grad is not None]
  if not ps: return Tensor(0.0), Tensor(1.0)
  sq = None
  for p in ps:
    s = p.grad.float().square().sum()
    sq = s if sq is None else sq + s
  total = sq.sqrt()
  return total, (max_norm / (total + eps)).minimum(1.0)


def clip_grad_norm(params, max_norm: float, eps: float = 1e-6) -> Tensor:
  """Scale all gradients by min(1, max_norm / (total_norm + eps)) (torch.nn.utils.clip_grad_norm_);
  returns the total (pre-clip) L2 norm over all gradients as a float32 tensor of shape ()."""
  total, coef = clip_scale(params, max_norm, eps)
  for _, p in _named(params):
    if p.grad is not None: p.grad = (p.grad.float() * coef).cast(p.grad.dtype)
  return total


class Optimizer:
  def __init__(self, params, lr: float, master_dtype="float32"):
    self.named = _named(params)
    if not self.named: raise ValueError(f"{type(self).__name__}: got no parameters")
    self.params = [p for _, p in self.named]
    for p in self.params:
      if not p.dtype.is_float: raise TypeError(f"{type(self).__name__}: parameter of dtype {p.dtype.name} cannot be optimized")
      p.requires_grad = True
    dev = self.params[0].device
    self.lr = materialize(Tensor(np.array([lr], np.float32), device=dev), requires_grad=False)
    self.step_count = materialize(Tensor(np.zeros(1, np.float32), device=dev), requires_grad=False)
    self.host_lr, self.host_step = float(lr), 0   # the host's copies (double precision) of lr and step_count
    self.state_dtype = dtypes.get(master_dtype)
    self.master = [materialize(p.cast(self.state_dtype), requires_grad=False) if p.dtype.itemsize < self.state_dtype.itemsize else None for p in self.params]
    self.state: list[dict[str, Tensor]] = [{} for _ in self.params]

  def _zeros(self, p: Tensor) -> Tensor:
    return materialize(Tensor.zeros(*p.shape, device=p.device, dtype=self.state_dtype), requires_grad=False)

  def set_lr(self, lr: float):
    """Write a new learning rate into the device tensor `self.lr` (read by the next step, jitted or not)."""
    self.host_lr = float(lr)
    _write(self.lr, [lr])

  def _count_step(self):
    """The host's part of a step (each_call: before every replay too): count it and write what it reads."""
    self.host_step += 1
    _write(self.step_count, [self.host_step])

  def zero_grad(self):
    for p in self.params: p.grad = None

  def _update(self, i: int, w: Tensor, g: Tensor) -> Tensor:
    """Return the new fp32 weight from fp32 weight w and fp32 gradient g (assigning state as needed)."""
    raise NotImplementedError

  def step(self, grad_scale: Tensor | None = None):
    """Apply one update to every parameter that has a gradient, then realize params and state.
    grad_scale: a one-element float32 tensor every gradient is multiplied by (global-norm clipping's coefficient)."""
    each_call(self._count_step)
    with no_grad():
      out = []
      for i, p in enumerate(self.params):
        if p.grad is None: continue
        out += self._apply(i, p, p.grad.detach(), grad_scale)
      Tensor.realize_all(*out)

  def _apply(self, i: int, p: Tensor, grad: Tensor, scale: Tensor | None) -> list[Tensor]:
    """Update parameter i (and its master and state) from its gradient; returns the tensors it changed."""
    g = grad.float() if scale is None else grad.float() * scale.float().reshape(())
    m = self.master[i]
    w = m if m is not None else p.detach()
    new = self._update(i, w.float(), g)
    if m is not None:
      m.assign(new); p.assign(m.cast(p.dtype))
    else: p.assign(new.cast(p.dtype))
    return [p, *([m] if m is not None else []), *self.state[i].values()]

  # ---- checkpoints ----
  def state_dict(self) -> dict[str, Tensor]:
    """{"lr", "step", "<param>.<slot>", "<param>.master"}: every tensor a resume needs."""
    sd = {"lr": self.lr, "step": self.step_count}
    for (n, _), st, m in zip(self.named, self.state, self.master):
      for k, v in st.items(): sd[f"{n}.{k}"] = v
      if m is not None: sd[f"{n}.master"] = m
    return sd

  def load_state_dict(self, sd: dict, strict: bool = True):
    from .module import _np_of
    from ..checkpoint import CheckpointError
    # slots are created lazily on the first step; make them exist so a fresh optimizer can load
    for i, p in enumerate(self.params): self._init_state(i, p)
    own = self.state_dict()
    problems = []
    if strict:
      problems += [f"missing tensor {k!r}" for k in own if k not in sd]
      problems += [f"unexpected tensor {k!r}" for k in sd if k not in own]
    problems += [f"{k!r} has shape {tuple(sd[k].shape)}, expected {tuple(t.shape)}" for k, t in own.items() if k in sd and tuple(sd[k].shape) != tuple(t.shape)]
    if problems: raise CheckpointError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
    for k, t in own.items():
      if k in sd:
        arr, _ = _np_of(sd[k])
        t.assign(Tensor(np.ascontiguousarray(arr, dtype=np.float32).reshape(t.shape), device=t.device, dtype=t.dtype)).realize()
    if "lr" in sd: self.host_lr = float(self.lr.numpy()[0])
    if "step" in sd: self.host_step = int(self.step_count.numpy()[0])
    return self

  def _init_state(self, i, p): pass


def _write(t: Tensor, values):
  """Write host values into the realized float32 device tensor t."""
  t.assign(Tensor(np.array(values, np.float32), device=t.device)).realize()


class SGD(Optimizer):
  """torch.optim.SGD (dampening 0): g += wd*w; buf = mu*buf + g; g = g + mu*buf (nesterov) or buf; w -= lr*g."""
  def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, master_dtype="float32"):
    super().__init__(params, lr, master_dtype)
    if nesterov and momentum <= 0: raise ValueError("SGD: nesterov needs momentum > 0")
    self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
    for i, p in enumerate(self.params): self._init_state(i, p)

  def _init_state(self, i, p):
    if self.momentum and "momentum_buffer" not in self.state[i]: self.state[i]["momentum_buffer"] = self._zeros(p)

  def _update(self, i, w, g):
    if self.weight_decay: g = g + w * self.weight_decay
    if self.momentum:
      buf = self.state[i]["momentum_buffer"]
      buf.assign(buf * self.momentum + g)
      g = g + buf * self.momentum if self.nesterov else buf
    return w - g * self.lr


class AdamW(Optimizer):
  """torch.optim.AdamW: w *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
  w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). The step's scalars 1 - lr*wd, lr/(1-b1^t) and
  1/sqrt(1-b2^t) are computed in double on the host each step and written to `self.scalars` (torch computes them
  as python floats; float32 on the device would be off by 2e-5 of the update at b2 = 0.999).
  `no_decay(name, tensor)` picks parameters without weight decay (default: none excluded)."""
  def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
               no_decay=None, master_dtype="float32", fused: bool | None = None):
    super().__init__(params, lr, master_dtype)
    self.b1, self.b2 = betas
    self.eps, self.weight_decay = eps, weight_decay
    self.decay = [not (no_decay and no_decay(n, p)) for n, p in self.named]
    self.fused = fused
    self.scalars = materialize(Tensor(np.ones(3, np.float32), device=self.params[0].device), requires_grad=False)
    for i, p in enumerate(self.params): self._init_state(i, p)

  def _count_step(self):
    super()._count_step()
    t, lr = self.host_step, self.host_lr
    _write(self.scalars, [1 - lr * self.weight_decay, lr / (1 - self.b1 ** t), 1 / math.sqrt(1 - self.b2 ** t)])

  def _apply(self, i, p, grad, scale):
    """fused (None: where the device renders it): the whole update of a float32-state parameter as one
    kernel (core.kernels.adamw, the same arithmetic as _update) instead of four."""
    fused = self.fused if self.fused is not None else renders_on(p.device)
    if not fused or self.state_dtype is not dtypes.float32 or not grad.dtype.is_float: return super()._apply(i, p, grad, scale)
    m = self.master[i]
    hyper = (self.b1, self.b2, self.eps, bool(self.weight_decay and self.decay[i]))
    return adamw_update(m if m is not None else p, self.state[i]["exp_avg"], self.state[i]["exp_avg_sq"], grad,
                        self.scalars, hyper, scale, p if m is not None else None)

  def _init_state(self, i, p):
    if "exp_avg" not in self.state[i]:
      self.state[i]["exp_avg"] = self._zeros(p); self.state[i]["exp_avg_sq"] = self._zeros(p)

  def _update(self, i, w, g):
    m, v = self.state[i]["exp_avg"], self.state[i]["exp_avg_sq"]
    decay, step_size, inv_bc2 = (self.scalars[k] for k in range(3))
    if self.weight_decay and self.decay[i]: w = w * decay
    m.assign(m * self.b1 + g * (1 - self.b1))
    v.assign(v * self.b2 + g * g * (1 - self.b2))
    denom = v.sqrt() * inv_bc2 + self.eps
    return w - step_size * m / denom


class LARS(Optimizer):
  """LARS as in the MLPerf ResNet-50 reference (mlcommons/training image_classification/tensorflow2/
  lars_optimizer.py): for adapted parameters
    trust = eta*||w|| / (||g|| + wd*||w|| + epsilon)  (1 where ||w|| or ||g|| is 0),
    g' = g + wd*w,  scaled_lr = lr*trust;
  skipped parameters (biases, batch-norm) use g' = g and scaled_lr = lr (no decay, no adaptation).
  Then v = momentum*v - scaled_lr*g'; w += v (nesterov: w += momentum*v - scaled_lr*g').
  `skip(name, tensor)` picks skipped parameters; default: every parameter with ndim <= 1."""
  def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, eta: float = 0.001,
               epsilon: float = 0.0, nesterov: bool = False, skip=None, master_dtype="float32"):
    super().__init__(params, lr, master_dtype)
    self.momentum, self.weight_decay, self.eta, self.epsilon, self.nesterov = momentum, weight_decay, eta, epsilon, nesterov
    skip = skip or (lambda n, p: p.ndim <= 1)
    self.adapt = [not skip(n, p) for n, p in self.named]
    for i, p in enumerate(self.params): self._init_state(i, p)

  def _init_state(self, i, p):
    if "momentum" not in self.state[i]: self.state[i]["momentum"] = self._zeros(p)

  def _update(self, i, w, g):
    lr = self.lr
    if self.adapt[i]:
      wn, gn = w.square().sum().sqrt(), g.square().sum().sqrt()
      trust = (self.eta * wn / (gn + self.weight_decay * wn + self.epsilon)).where((wn > 0) & (gn > 0), 1.0)
      lr = lr * trust
      g = g + w * self.weight_decay
    v = self.state[i]["momentum"]
    v.assign(v * self.momentum - g * lr)
    return w + v * self.momentum - g * lr if self.nesterov else w + v
