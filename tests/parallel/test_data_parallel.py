"""Data and tensor parallel training on CPU virtual devices matches single-device training: a tiny
Llama trained for 20 steps on meshes dp x tp = 2x1, 1x2, 2x2 and 4x1 with ZeRO-1 gives the loss curve
and the final weights of 1x1 within float32 rounding, and its replicas stay identical."""
import numpy as np
import pytest
from trainer.core import Tensor, jit
from trainer.models.llama import Llama, tiny_config
from trainer.nn.optim import AdamW
from trainer.parallel.data_parallel import DataParallel
from trainer.parallel.mesh import Mesh
from trainer.parallel.sharded import Sharded
from trainer.parallel.tensor_parallel import shard_model, LLAMA_PLAN

STEPS, BATCH, SEQ = 20, 8, 16


def train(dp: int, tp: int, zero1: bool):
  Tensor.manual_seed(0)
  cfg = tiny_config()
  mesh = Mesh(dp, tp)
  place = (lambda a, d: Sharded.replicate(Tensor(a, device=mesh.device(d)), mesh.tp_group(d))) if tp > 1 else (lambda a, d: Tensor(a, device=mesh.device(d)))
  models = [Llama(cfg, device=mesh.device(d)) for d in range(dp)]
  if tp > 1: models = [shard_model(m, mesh.tp_group(d), LLAMA_PLAN) for d, m in enumerate(models)]
  ddp = DataParallel(models, lambda ps: AdamW(ps, 3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), zero1=zero1, clip_norm=1.0)
  rng = np.random.default_rng(0)
  data = rng.integers(0, cfg.vocab_size, (STEPS, BATCH, SEQ + 1)).astype(np.int32)

  @jit
  def step(xs, ys):
    losses = []
    for m, x, y in zip(models, xs, ys):
      loss = m.loss(x, y)
      loss.backward()
      losses.append(loss.to("CPU:0"))
    ddp.step()
    return sum(losses) * (1.0 / dp)

  curve = []
  for s in range(STEPS):
    parts = np.split(data[s], dp)
    xs = [place(p[:, :-1], d) for d, p in enumerate(parts)]
    ys = [place(p[:, 1:], d) for d, p in enumerate(parts)]
    curve.append(step(xs, ys).item())
  return curve, [{k: v.numpy() for k, v in m.state_dict().items()} for m in models]


@pytest.fixture(scope="module")
def single(): return train(1, 1, False)


@pytest.mark.parametrize("dp,tp,zero1", [(2, 1, False), (1, 2, False), (2, 2, False), (4, 1, True)])
def test_same_curve_and_weights_as_one_device(single, dp, tp, zero1):
  ref_curve, ref_w = single
  curve, ws = train(dp, tp, zero1)
  assert ref_curve[-1] < ref_curve[0]
  np.testing.assert_allclose(curve, ref_curve, rtol=2e-4, atol=2e-4)
  for w in ws:
    for k in ref_w[0]: np.testing.assert_allclose(w[k], ref_w[0][k], rtol=1e-3, atol=2e-4, err_msg=k)
  for w in ws[1:]:   # replicas stay bit-identical
    for k in w: np.testing.assert_array_equal(w[k], ws[0][k])
