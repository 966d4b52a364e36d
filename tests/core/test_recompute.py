"""Activation recompute: a marked region gives bit-identical losses and gradients with far less memory
held for backward, on a Llama whose blocks are marked by nn.recompute_blocks (the model code unchanged)."""
import numpy as np
import pytest
from trainer.core import Tensor
from trainer.core.device import get_runtime
from trainer.core.recompute import recompute
from trainer.models.llama import Llama, LlamaConfig
from trainer.nn import recompute_blocks, Linear


def step(m, tok, rc):
  recompute_blocks(m, rc)
  m.zero_grad()
  rt = get_runtime(m.lm_head.weight.device)
  base = rt.peak_in_use = rt.in_use
  loss = m.loss(Tensor(tok[:, :-1]), Tensor(tok[:, 1:]))
  loss.backward()
  Tensor.realize_all(loss, *[p.grad for p in m.parameters()])
  return loss.item(), {n: p.grad.numpy() for n, p in m.named_parameters()}, rt.peak_in_use - base


def test_llama_blocks_recomputed_give_identical_losses_and_gradients_with_less_memory():
  cfg = LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=256, max_seq_len=64)
  Tensor.manual_seed(0)
  m = Llama(cfg)
  tok = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 65)).astype(np.int32)
  loss0, g0, peak0 = step(m, tok, False)
  loss1, g1, peak1 = step(m, tok, True)
  assert loss0 == loss1
  for k in g0:
    assert np.abs(g0[k]).max() > 0, k
    np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)
  # what backward holds beyond the gradients (4 layers; the activations of a layer are many (2, 64, 64) floats)
  grads = sum(v.nbytes for v in g0.values())
  assert peak1 - grads < 0.5 * (peak0 - grads), (peak0, peak1, grads)


def test_region_gradients_match_direct_and_inputs_may_be_returned():
  Tensor.manual_seed(1)
  lin = Linear(8, 8)
  x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
  def fn(a): return lin(a).relu() * a, a
  grads = []
  for rc in (False, True):
    lin.zero_grad()
    t = Tensor(x, requires_grad=True)
    y, same = recompute(fn, t, needs_grad=True) if rc else fn(t)
    ((y * y).sum() + same.sum()).backward()
    grads.append([t.grad.numpy(), lin.weight.grad.numpy(), lin.bias.grad.numpy()])
  for a, b in zip(*grads): np.testing.assert_array_equal(a, b)


def test_a_region_that_draws_random_numbers_is_refused():
  t = Tensor(np.ones((4, 4), np.float32), requires_grad=True)
  with pytest.raises(ValueError, match="random"):
    recompute(lambda a: a * Tensor.rand(4, 4), t)
