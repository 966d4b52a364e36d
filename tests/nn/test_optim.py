import math
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, jit
from trainer.nn import SGD, AdamW, LARS, clip_grad_norm


def make(shapes, seed=0):
  rng = np.random.default_rng(seed)
  ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  return ws, [Tensor(w.copy(), requires_grad=True) for w in ws]


def grads(shapes, k):
  rng = np.random.default_rng(100 + k)
  return [rng.standard_normal(s).astype(np.float32) for s in shapes]


SHAPES = [(4, 3), (3,), (2, 2, 2)]
LRS = [0.1, 0.05, 0.2, 0.01, 0.07]


def run(opt, params, steps=5):
  for k in range(steps):
    opt.set_lr(LRS[k])
    for p, g in zip(params, grads(SHAPES, k)): p.grad = Tensor(g)
    opt.step()


@pytest.mark.parametrize("nesterov,wd", [(False, 0.0), (False, 0.01), (True, 0.01)])
def test_sgd_matches_torch_formula(nesterov, wd):
  ws, ps = make(SHAPES)
  run(SGD(ps, lr=0.1, momentum=0.9, weight_decay=wd, nesterov=nesterov), ps)
  bufs = [np.zeros_like(w, dtype=np.float64) for w in ws]
  ws = [w.astype(np.float64) for w in ws]
  for k in range(5):
    for i, g in enumerate(grads(SHAPES, k)):
      g = g + wd * ws[i]
      bufs[i] = 0.9 * bufs[i] + g if k else g          # torch: the first buffer is the gradient itself
      d = g + 0.9 * bufs[i] if nesterov else bufs[i]
      ws[i] = ws[i] - LRS[k] * d
  for w, p in zip(ws, ps): np.testing.assert_allclose(p.numpy(), w, rtol=1e-5, atol=1e-6)


def test_sgd_plain():
  ws, ps = make(SHAPES)
  run(SGD(ps, lr=0.1), ps, steps=2)
  ref = [w - LRS[0] * g0 - LRS[1] * g1 for w, g0, g1 in zip(ws, grads(SHAPES, 0), grads(SHAPES, 1))]
  for r, p in zip(ref, ps): np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-6)


def test_adamw_matches_torch_formula():
  ws, ps = make(SHAPES)
  b1, b2, eps, wd = 0.9, 0.95, 1e-5, 0.1
  run(AdamW(ps, lr=0.1, betas=(b1, b2), eps=eps, weight_decay=wd), ps)
  ws = [w.astype(np.float64) for w in ws]
  m = [np.zeros_like(w) for w in ws]; v = [np.zeros_like(w) for w in ws]
  for k in range(5):
    t = k + 1
    for i, g in enumerate(grads(SHAPES, k)):
      ws[i] *= 1 - LRS[k] * wd
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      denom = np.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + eps
      ws[i] -= LRS[k] / (1 - b1 ** t) * m[i] / denom
  for w, p in zip(ws, ps): np.testing.assert_allclose(p.numpy(), w, rtol=1e-5, atol=1e-5)


def test_adamw_no_decay_selector():
  ws, ps = make(SHAPES)
  opt = AdamW(list(zip(["a.weight", "a.bias", "b.weight"], ps)), lr=0.1, weight_decay=0.5, no_decay=lambda n, p: n.endswith("bias"))
  assert opt.decay == [True, False, True]


def test_lars_matches_mlperf_reference():
  ws, ps = make(SHAPES)
  mom, wd, eta = 0.9, 1e-2, 0.02
  run(LARS(ps, lr=0.1, momentum=mom, weight_decay=wd, eta=eta), ps)
  ws = [w.astype(np.float64) for w in ws]
  vs = [np.zeros_like(w) for w in ws]
  for k in range(5):
    for i, g in enumerate(grads(SHAPES, k)):
      lr = LRS[k]
      if ws[i].ndim > 1:        # 1-d (bias / batch-norm) parameters are skipped: no decay, no trust ratio
        wn, gn = np.linalg.norm(ws[i]), np.linalg.norm(g)
        lr = lr * eta * wn / (gn + wd * wn)
        g = g + wd * ws[i]
      vs[i] = mom * vs[i] - lr * g
      ws[i] = ws[i] + vs[i]
  for w, p in zip(ws, ps): np.testing.assert_allclose(p.numpy(), w, rtol=1e-5, atol=1e-6)


def test_lars_nesterov_and_zero_weight():
  ps = [Tensor(np.zeros((2, 2), np.float32), requires_grad=True)]
  opt = LARS(ps, lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001, nesterov=True)
  g = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
  ps[0].grad = Tensor(g); opt.step()
  # ||w|| = 0: trust ratio 1; v = -lr*g; w += mom*v - lr*g
  np.testing.assert_allclose(ps[0].numpy(), 0.9 * (-0.5 * g) - 0.5 * g, rtol=1e-6)


def test_clip_grad_norm():
  ws, ps = make(SHAPES)
  gs = grads(SHAPES, 0)
  for p, g in zip(ps, gs): p.grad = Tensor(g)
  total = math.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gs))
  n = clip_grad_norm(ps, 1.0)
  assert abs(n.item() - total) < 1e-5 * total and total > 1
  for p, g in zip(ps, gs): np.testing.assert_allclose(p.grad.numpy(), g / (total + 1e-6), rtol=1e-5)
  for p, g in zip(ps, gs): p.grad = Tensor(g)
  clip_grad_norm(ps, 100.0)   # below the limit: unchanged
  for p, g in zip(ps, gs): np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6)


def test_bf16_params_keep_fp32_master():
  rng = np.random.default_rng(3)
  w = rng.standard_normal((8,)).astype(np.float32)
  p = Tensor(w, dtype=dtypes.bfloat16, requires_grad=True)
  opt = SGD([p], lr=1e-3)
  assert opt.master[0] is not None and opt.master[0].dtype is dtypes.float32
  master = p.numpy().astype(np.float64)
  g = rng.standard_normal(8).astype(np.float32)
  for _ in range(10):
    p.grad = Tensor(g, dtype=dtypes.bfloat16); opt.step()
    master -= 1e-3 * p.grad.numpy()
  np.testing.assert_allclose(opt.master[0].numpy(), master, rtol=1e-5, atol=1e-6)
  assert p.dtype is dtypes.bfloat16
  np.testing.assert_array_equal(p.numpy(), Tensor(opt.master[0].numpy(), dtype=dtypes.bfloat16).numpy())


def test_jitted_step_reads_new_lr_each_call():
  ws, ps = make([(3,)])
  opt = SGD(ps, lr=0.0)
  g = Tensor(np.array([1.0, 2.0, -1.0], np.float32))

  @jit
  def step(g):
    ps[0].grad = g * 1.0
    opt.step()
    return ps[0]

  w = ws[0].astype(np.float64)
  for k, lr in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):
    opt.set_lr(lr)
    step(g)
    w = w - lr * np.array([1.0, 2.0, -1.0])
  np.testing.assert_allclose(ps[0].numpy(), w, rtol=1e-6)


def test_optimizer_state_dict_round_trip():
  ws, ps = make(SHAPES)
  opt = AdamW(list(zip(["a", "b", "c"], ps)), lr=0.1, weight_decay=0.1)
  run(opt, ps, steps=2)
  sd = {k: v.numpy().copy() for k, v in opt.state_dict().items()}
  assert {"lr", "step", "a.exp_avg", "a.exp_avg_sq", "c.exp_avg_sq"} <= set(sd)
  ws2, ps2 = make(SHAPES)
  for p, q in zip(ps2, ps): p.assign(Tensor(q.numpy())).realize()
  opt2 = AdamW(list(zip(["a", "b", "c"], ps2)), lr=0.5, weight_decay=0.1)
  opt2.load_state_dict(sd)
  for o in (opt, opt2):
    for p, g in zip(o.params, grads(SHAPES, 7)): p.grad = Tensor(g)
    o.step()
  for p, q in zip(ps, ps2): np.testing.assert_array_equal(p.numpy(), q.numpy())
  from trainer.checkpoint import CheckpointError
  with pytest.raises(CheckpointError, match="missing tensor 'b.exp_avg'"):
    sd.pop("b.exp_avg"); opt2.load_state_dict(sd)


# ---- the fused AdamW kernel (trainer/core/kernels/adamw.py) against the primitive-op formulation ----
FUSED_SHAPES = [(7,), (5, 3), (1,), (33, 17)]


def _adamw_run(fused, param_dtype, grad_dtype, scaled, steps=4):
  rng = np.random.default_rng(5)
  ps = [Tensor(rng.standard_normal(s).astype(np.float32), dtype=param_dtype, requires_grad=True) for s in FUSED_SHAPES]
  opt = AdamW(list(zip("abcd", ps)), lr=0.1, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, no_decay=lambda n, p: n == "b", fused=fused)
  for k in range(steps):
    opt.set_lr(LRS[k])
    for p in ps: p.grad = Tensor(rng.standard_normal(p.shape).astype(np.float32), dtype=grad_dtype)
    opt.step(grad_scale=Tensor(np.array([0.5 + 0.25 * k], np.float32)) if scaled else None)
  state = {k: v.numpy() for k, v in opt.state_dict().items()}
  return [p.numpy() for p in ps], state, opt


@pytest.mark.parametrize("param_dtype,grad_dtype,scaled", [("float32", "float32", False), ("bfloat16", "bfloat16", True),
                                                           ("bfloat16", "float32", False), ("float16", "float16", True)])
def test_adamw_fused_equals_primitive_ops(param_dtype, grad_dtype, scaled):
  fused, fstate, _ = _adamw_run(True, param_dtype, grad_dtype, scaled)
  plain, pstate, _ = _adamw_run(False, param_dtype, grad_dtype, scaled)
  for a, b in zip(fused, plain): np.testing.assert_array_equal(a, b)
  assert set(fstate) == set(pstate)
  for k in fstate: np.testing.assert_array_equal(fstate[k], pstate[k], err_msg=k)


def test_adamw_fused_against_float64_reference():
  """bf16 parameters, fp32 master and moments, a gradient scale: the torch formula in float64."""
  _, state, opt = _adamw_run(True, "bfloat16", "bfloat16", True)
  rng = np.random.default_rng(5)
  ws = [rng.standard_normal(s).astype(np.float32) for s in FUSED_SHAPES]
  ws = [Tensor(w, dtype="bfloat16").float().numpy().astype(np.float64) for w in ws]   # the master starts at the bf16 weight
  m = [np.zeros_like(w) for w in ws]; v = [np.zeros_like(w) for w in ws]
  for k in range(4):
    t = k + 1
    for i, w in enumerate(ws):
      g = Tensor(rng.standard_normal(w.shape).astype(np.float32), dtype="bfloat16").float().numpy().astype(np.float64) * (0.5 + 0.25 * k)
      if i != 1: ws[i] = w * (1 - LRS[k] * 0.1)
      m[i] = 0.9 * m[i] + 0.1 * g
      v[i] = 0.95 * v[i] + 0.05 * g * g
      ws[i] = ws[i] - LRS[k] / (1 - 0.9 ** t) * m[i] / (np.sqrt(v[i]) / math.sqrt(1 - 0.95 ** t) + 1e-5)
  for i, name in enumerate("abcd"):
    np.testing.assert_allclose(state[f"{name}.master"], ws[i], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(state[f"{name}.exp_avg"], m[i], rtol=2e-5, atol=1e-6)
    # the parameter is its master rounded to bfloat16 (bit for bit)
    np.testing.assert_array_equal(opt.params[i].numpy(), Tensor(state[f"{name}.master"], dtype="bfloat16").numpy())


def test_adamw_fused_is_one_kernel_per_parameter_in_place():
  from trainer.core import realize as R
  ps = [Tensor(np.random.default_rng(1).standard_normal(s).astype(np.float32), dtype="bfloat16", requires_grad=True) for s in FUSED_SHAPES]
  opt = AdamW(ps, lr=0.1)
  held = [(p.lazydata.buffer, opt.master[i].lazydata.buffer, opt.state[i]["exp_avg"].lazydata.buffer) for i, p in enumerate(ps)]
  for p in ps: p.grad = Tensor(np.ones(p.shape, np.float32), dtype="bfloat16").contiguous().realize()
  before = R.stats["kernels"]
  opt.step()
  assert R.stats["kernels"] - before == 2 + len(ps)   # the host's writes (step counter, AdamW's scalars), one update per parameter
  for i, p in enumerate(ps):
    assert (p.lazydata.buffer, opt.master[i].lazydata.buffer, opt.state[i]["exp_avg"].lazydata.buffer) == held[i]
    assert p.lazydata.buffer is held[i][0]


def test_adamw_fused_replays_under_jit():
  rng = np.random.default_rng(2)
  w0 = rng.standard_normal((6, 5)).astype(np.float32)
  gs = [rng.standard_normal((6, 5)).astype(np.float32) for _ in range(5)]
  results = []
  for jitted in (False, True):
    p = Tensor(w0, dtype="bfloat16", requires_grad=True)
    opt = AdamW([p], lr=0.05, weight_decay=0.1)
    def step(g):
      p.grad = g.cast("bfloat16")
      opt.step(grad_scale=(g.square().sum().sqrt() + 1).reciprocal())
      return p
    f = jit(step) if jitted else step
    for g in gs: f(Tensor(g))
    results.append((p.numpy(), opt.master[0].numpy()))
  np.testing.assert_array_equal(results[0][0], results[1][0])
  np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("fused,jitted", [(True, False), (False, False), (True, True), (False, True)])
def test_adamw_bias_corrections_are_computed_in_double(fused, jitted):
  """torch's AdamW computes 1 - beta**t, lr / (1 - beta1**t) and sqrt(1 - beta2**t) in double on the host (python
  floats); with beta2 = 0.999 float32 arithmetic on the device is off by about 2e-5 of the update. The weights
  start near 0 so each step's update dominates them and is resolved to about 1e-7."""
  rng = np.random.default_rng(11)
  w0 = (rng.standard_normal((5, 7)) * 1e-4).astype(np.float32)
  gs = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(4)]
  lrs = [1e-2, 3e-3, 2e-2, 5e-3]
  p = Tensor(w0.copy(), requires_grad=True)
  opt = AdamW([p], lr=lrs[0], weight_decay=0.1, fused=fused)   # torch's defaults: betas (0.9, 0.999), eps 1e-8
  def step(g):
    p.grad = g * 1.0
    opt.step()
    return p
  f = jit(step) if jitted else step
  w, m, v = w0.astype(np.float64), np.zeros((5, 7)), np.zeros((5, 7))
  for k, (g, lr) in enumerate(zip(gs, lrs)):
    opt.set_lr(lr)
    f(Tensor(g))
    t = k + 1
    w = w * (1 - lr * 0.1)
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
    w = w - lr / (1 - 0.9 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
    np.testing.assert_allclose(p.numpy(), w, rtol=2e-6, atol=1e-8, err_msg=f"step {t}")
  assert opt.state_dict()["step"].numpy()[0] == 4
