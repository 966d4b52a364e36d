"""The scheduler on random graphs: shared subexpressions, views of computed nodes, reductions with
epilogues and broadcasting, checked against numpy float64 (forward and gradients); what it stores of a
residual stream and of a widening cast."""
import gc
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from trainer.core.device import get_runtime
from trainer.core.schedule import create_schedule, Kernel
from trainer.nn.layers import RMSNorm, Linear
from opcheck import fd_grad

N = 5


def build(seed, xs, lib):
  """A random program over (N, N) inputs. lib: 'np' or 't'."""
  r = np.random.default_rng(seed)
  pool = list(xs)
  for _ in range(8):
    k = int(r.integers(0, 9))
    a = pool[int(r.integers(0, len(pool)))]
    b = pool[int(r.integers(0, len(pool)))]
    if k == 0: v = a * b
    elif k == 1: v = a + b * 0.5
    elif k == 2: v = (lib_tanh(a, lib) + 1.5) ** 0.5 if lib == "np" else ((a.tanh() + 1.5).sqrt())
    elif k == 3: v = a.T if lib == "t" else a.T.copy()
    elif k == 4: v = a[::-1] if lib == "np" else a.flip(0)
    elif k == 5:   # shift by one along axis 1 through pad + shrink
      v = np.pad(a, ((0, 0), (1, 0)))[:, :N] if lib == "np" else a.pad(((0, 0), (1, 0)))[:, :N]
    elif k == 6:
      ax = int(r.integers(0, 2))
      v = a.sum(ax, keepdims=True) if lib == "np" else a.sum(ax, keepdim=True)
      v = v * b
    elif k == 7:
      ax = int(r.integers(0, 2))
      v = (a.max(ax, keepdims=True) if lib == "np" else a.amax(ax, keepdim=True)) - b
    else:
      v = np.exp(-a * a) if lib == "np" else (-a * a).exp()
    pool.append(v)
  out = pool[-1] + pool[-2] * pool[-3]
  return out.sum() if lib == "np" else out.sum()


def lib_tanh(a, lib): return np.tanh(a)


@pytest.mark.parametrize("seed", range(12))
def test_random_graph(seed):
  r = np.random.default_rng(1000 + seed)
  xs = [r.uniform(-1, 1, (N, N)) for _ in range(2)]
  xs = [x.astype(np.float32).astype(np.float64) for x in xs]
  ts = [Tensor(x.astype(np.float32), requires_grad=True) for x in xs]
  out = build(seed, ts, "t")
  ref = build(seed, xs, "np")
  np.testing.assert_allclose(out.item(), ref, rtol=1e-4, atol=1e-4)
  out.backward()
  for i, (x, t) in enumerate(zip(xs, ts)):
    def f(xi, i=i): return float(build(seed, [xi if j == i else xj for j, xj in enumerate(xs)], "np"))
    g = t.grad.numpy() if t.grad is not None else np.zeros_like(x)   # an input the program never read
    np.testing.assert_allclose(g, fd_grad(f, x.copy()), rtol=1e-3, atol=1e-3, err_msg=f"grad {i}")


def test_shared_node_read_through_two_views():
  x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
  e = Tensor(x).exp()
  out = (e + e.T + e.flip(1) + e.sum(0, keepdim=True)).numpy()
  ex = np.exp(x.astype(np.float64))
  np.testing.assert_allclose(out, ex + ex.T + ex[:, ::-1] + ex.sum(0, keepdims=True), rtol=1e-5)


def test_reuse_after_realize_and_partial_realize():
  x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
  y = (x * 2).exp()
  y.realize()
  z = (y.sum(1) + y[:, 0]).numpy()
  yn = np.exp(np.arange(6).reshape(2, 3) * 2.0)
  np.testing.assert_allclose(z, yn.sum(1) + yn[:, 0], rtol=1e-5)
  w = x + 1
  v = w * w.sum()
  w.realize()
  np.testing.assert_allclose(v.numpy(), (np.arange(6).reshape(2, 3) + 1) * 21.0)


def _residual_stack_peak(n_layers, T=256, D=128):
  """Peak bytes above the parameters of forward and backward through h = h + W(norm(h)), n_layers times, in bfloat16."""
  r = np.random.default_rng(0)
  x = Tensor(r.standard_normal((T, D)).astype(np.float32), dtype="bfloat16", requires_grad=True)
  layers = [(RMSNorm(D, dtype=dtypes.bfloat16), Linear(D, D, bias=False, dtype=dtypes.bfloat16)) for _ in range(n_layers)]
  params = [p for pair in layers for m in pair for p in m.parameters()]
  Tensor.realize_all(*params)
  gc.collect()
  rt = get_runtime("CPU:0")
  rt.peak_in_use = base = rt.in_use
  h = x
  for norm, lin in layers: h = h + lin(norm(h))
  h.float().square().sum().backward()
  Tensor.realize_all(x.grad, *[p.grad for p in params])
  return rt.peak_in_use - base


def test_residual_stream_keeps_one_sum_and_one_normed_input_per_layer():
  """Backward needs of each layer the residual sum (the norm's input), the normed input (the weight's gradient)
  and the norm's float32 statistics: the sum is stored at its own add, so the matrix product it adds is freed
  and no float32 copy of the stream is kept (before: the product and every few layers a float32 sum)."""
  T, D = 256, 128   # 64 KiB a bfloat16 activation: FREED_BYTES
  _residual_stack_peak(4, T, D)   # a first run may allocate what later ones share (the interpreter: once per kernel)
  peaks = [_residual_stack_peak(n, T, D) for n in (4, 5, 6)]
  want = 2 * T * D * 2 + 2 * T * 4
  assert [b - a for a, b in zip(peaks, peaks[1:])] == [want, want], peaks


def test_a_shared_widening_cast_stores_its_narrow_source():
  """A float32 view of a bfloat16 sum read by several kernels: the sum is stored in bfloat16 (half the bytes),
  and each reader redoes the exact cast; values are those of the sum rounded to bfloat16."""
  r = np.random.default_rng(1)
  xs = [r.standard_normal(40).astype(np.float32) for _ in range(6)]
  ts = [Tensor(x, dtype="bfloat16") for x in xs]
  s = ts[0] + ts[1] + ts[2] + ts[3] + ts[4] + ts[5]
  wide = s.float()
  a, b = (wide * wide).sum(), (wide * 3).exp()
  kernels = [k for k in create_schedule([a.lazydata, b.lazydata]) if isinstance(k, Kernel)]
  assert [k.output.dtype for k in kernels if k.output.shape == (40,) and k.output is not b.lazydata.base] == [dtypes.bfloat16]
  ref = s.numpy().astype(np.float64)
  np.testing.assert_allclose(a.numpy(), (ref * ref).sum(), rtol=1e-5)
  np.testing.assert_allclose(b.numpy(), np.exp(ref * 3), rtol=1e-5)


def test_a_schedule_s_new_kernels_are_compiled_together_once():
  """realize hands every kernel of a schedule that has no program yet to the runtime's compile_many in one call (the
  CPU compiles their C side by side); a kernel compiled before is not compiled again; the values are right."""
  rt = get_runtime("CPU:0")
  if not hasattr(type(rt), "compile_many") or "compile_many" in vars(rt): pytest.skip("the interpreter compiles nothing")
  calls, orig = [], type(rt).compile_many
  def spy(self, kernels, names):
    calls.append(len(kernels))
    return orig(self, kernels, names)
  x = np.random.default_rng(7).standard_normal((13, 7)).astype(np.float32)
  step = lambda a: ((a * 3.25 - 1.5).exp().sum(1).reshape(13, 1) * a).amax(0)   # constants no other test uses
  type(rt).compile_many = spy
  try:
    y = step(Tensor(x)).numpy()
    first = list(calls)
    z = step(Tensor(x)).numpy()
  finally:
    type(rt).compile_many = orig
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(y, (np.exp(x64 * 3.25 - 1.5).sum(1)[:, None] * x64).max(0), rtol=1e-5)
  assert len(first) == 1 and first[0] >= 2, calls
  assert calls == first                                # the same kernels again: nothing compiled
  np.testing.assert_array_equal(z, y)
