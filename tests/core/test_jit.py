"""The JIT: replay equals eager execution, arguments are copied in each call, intermediates share a
planned arena, and state updated with assign keeps its buffers."""
import numpy as np
import pytest
from trainer.core import Tensor, jit


def _chain(x, w):
  h = x
  for i in range(6):   # each step is a reduce, so each level is its own materialised intermediate
    h = (h @ w).relu() + h.sum(-1, keepdim=True) * (0.01 * (i + 1))
  return h.sum(0)


def test_replay_matches_eager_with_new_inputs_each_call():
  r = np.random.default_rng(0)
  w = Tensor(r.standard_normal((64, 64)).astype(np.float32) * 0.1)
  step = jit(_chain)
  for s in range(5):
    x = r.standard_normal((32, 64)).astype(np.float32)
    got = step(Tensor(x), w).numpy()
    np.testing.assert_allclose(got, _chain(Tensor(x), w).numpy(), rtol=1e-5, atol=1e-5)
  assert step.kernel_count >= 12


def test_intermediates_share_an_arena():
  r = np.random.default_rng(1)
  w = Tensor(r.standard_normal((256, 256)).astype(np.float32) * 0.05)
  step = jit(_chain)
  for _ in range(3): step(Tensor(r.standard_normal((256, 256)).astype(np.float32)), w)
  # six levels of 256x256 float32 intermediates (plus row sums) live one or two at a time
  assert step.intermediate_bytes >= 6 * 256 * 256 * 4
  assert step.arena_bytes <= step.intermediate_bytes / 2, (step.arena_bytes, step.intermediate_bytes)


def test_a_training_step_leaves_no_reference_cycles():
  """Activations must be freed by reference counting when a step ends (a cycle would keep them until the
  garbage collector ran, and the JIT would then take them for state outside its arena)."""
  import gc
  r = np.random.default_rng(4)
  w1 = Tensor(r.standard_normal((32, 64)).astype(np.float32) * 0.1, requires_grad=True)
  w2 = Tensor(r.standard_normal((64, 8)).astype(np.float32) * 0.1, requires_grad=True)
  def train_step(x):
    loss = ((x @ w1).relu() @ w2).log_softmax(-1).mean()
    loss.backward()
    for w in (w1, w2): w.assign(w - 0.1 * w.grad); w.grad = None
    return loss
  step = jit(train_step)
  gc.collect(); gc.disable()
  try:
    for _ in range(3): step(Tensor(r.standard_normal((16, 32)).astype(np.float32)))
    assert gc.collect() == 0
  finally: gc.enable()
  assert step.intermediate_bytes >= 16 * 64 * 4   # the hidden activations were planned, not kept


def test_arguments_are_read_not_swapped():
  """The caller's tensors are copied into the JIT's own buffers: an old argument keeps its data."""
  step = jit(lambda x: x * 2)
  a = [Tensor(np.full(5, v, np.float32)) for v in (1.0, 2.0, 3.0, 4.0)]
  outs = [step(t).numpy().copy() for t in a]
  assert [o[0] for o in outs] == [2.0, 4.0, 6.0, 8.0]
  assert [t.numpy()[0] for t in a] == [1.0, 2.0, 3.0, 4.0]


def test_assign_state_persists_across_replays():
  acc = Tensor(np.zeros(3, np.float32)).contiguous().realize()
  step = jit(lambda x: acc.assign(acc + x))
  for i in range(4): step(Tensor(np.full(3, i + 1, np.float32)))
  np.testing.assert_array_equal(acc.numpy(), np.full(3, 10.0))


def test_changed_signature_is_an_error():
  step = jit(lambda x: x + 1)
  for _ in range(2): step(Tensor(np.ones(3, np.float32)))
  with pytest.raises(ValueError, match="inputs changed"): step(Tensor(np.ones(4, np.float32)))
