"""The ring engine (parallel/ring.py) with small pieces, so every path runs: many pieces per chunk,
reduce-scatter partial sums in scratch (more than two devices), all-gather of unequal chunks, JIT
replays, gradients of every collective (collectives themselves, through one autograd context for all
outputs), and the same on CUDA devices where a GPU is present."""
import numpy as np
import pytest
from trainer.core import Tensor, dtypes, jit
from trainer.core.dtypes import bf16_to_f32, f32_to_bf16
from trainer.parallel import all_reduce, reduce_scatter, all_gather, ring

CPUS = [f"CPU:{i}" for i in range(4)]


@pytest.fixture
def small_pieces(monkeypatch):
  monkeypatch.setattr(ring, "PIECE_BYTES", 256)
  monkeypatch.setattr(ring, "ALIGN", 8)


def test_pieces_cover_the_range_on_aligned_cuts():
  for lo, hi, isz in [(0, 100, 2), (3, 64 << 20, 2), (1000, 10_000_001, 4), (7, 7, 4)]:
    ps = ring.pieces(lo, hi, isz)
    assert (ps[0][0], ps[-1][1]) == (lo, hi) if hi > lo else ps == []
    assert all(a[1] == b[0] for a, b in zip(ps, ps[1:])) and len(ps) <= ring.MAX_PIECES
    assert all(a % ring.ALIGN == 0 for a, _ in ps[1:])
  assert len(ring.pieces(0, 64 << 20, 2)) > 8   # 128 MiB is pipelined


def ring_sum(xs, dtype):
  """What the ring computes in dtype's rounding: chunk c is summed from device c+1 around to c."""
  n, total = len(xs), xs[0].size
  rnd = (lambda v: bf16_to_f32(f32_to_bf16(v))) if dtype == "bfloat16" else (lambda v: v.astype(dtype).astype(np.float32))
  out = np.empty(total, np.float32)
  for c, (lo, hi) in enumerate(ring.bounds(total, n)):
    v = rnd(xs[(c + 1) % n][lo:hi].astype(np.float32))
    for h in range(2, n + 1): v = rnd(v + rnd(xs[(c + h) % n][lo:hi].astype(np.float32)))
    out[lo:hi] = v
  return out


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int32", "int8"])
def test_all_reduce_in_many_pieces(small_pieces, n, dtype):
  rng = np.random.default_rng(n)
  size = 1037   # odd: chunks differ in size and pieces end off the alignment
  xs = [rng.integers(-100, 100, size).astype(dtype) if dtype.startswith("int") else rng.standard_normal(size).astype(np.float32) for _ in range(n)]
  out = all_reduce([Tensor(x, device=CPUS[i], dtype=dtype) for i, x in enumerate(xs)], "sum")
  got = [o.numpy() for o in out]
  if dtype.startswith("int"): np.testing.assert_array_equal(got[0], np.sum(np.stack(xs), 0, dtype=dtype))
  else: np.testing.assert_array_equal(got[0].astype(np.float32), ring_sum(xs, dtype))
  for g in got[1:]: np.testing.assert_array_equal(g, got[0])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_reduce_scatter_mean_and_all_gather_of_unequal_chunks(small_pieces, n):
  rng = np.random.default_rng(10 + n)
  xs = [rng.integers(-1000, 1000, 999).astype(np.int64) for _ in range(n)]
  parts = reduce_scatter([Tensor(x, device=CPUS[i]) for i, x in enumerate(xs)], "sum")
  np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), np.sum(xs, 0))
  fs = [rng.standard_normal(501).astype(np.float32) for _ in range(n)]
  means = reduce_scatter([Tensor(x, device=CPUS[i]) for i, x in enumerate(fs)], "mean")
  np.testing.assert_allclose(np.concatenate([m.numpy() for m in means]), np.mean(fs, 0), rtol=1e-5, atol=1e-6)
  chunks = [rng.standard_normal(s).astype(np.float32) for s in (300, 7, 129, 1)[:n]]
  for g in all_gather([Tensor(c, device=CPUS[i]) for i, c in enumerate(chunks)]):
    np.testing.assert_array_equal(g.numpy(), np.concatenate(chunks))


def test_jit_replays_collectives_on_new_inputs(small_pieces):
  step = jit(lambda a, b, c: [o * 2 for o in all_reduce([a, b, c], "max")] + all_gather(reduce_scatter([a, b, c], "sum")))
  rng = np.random.default_rng(3)
  for _ in range(4):
    xs = [rng.standard_normal((13, 11)).astype(np.float32) for _ in range(3)]
    out = step(*[Tensor(x, device=CPUS[i]) for i, x in enumerate(xs)])
    for o in out[:3]: np.testing.assert_array_equal(o.numpy(), 2 * np.max(xs, 0))
    for o in out[3:]: np.testing.assert_allclose(o.numpy(), np.sum(xs, 0).reshape(-1), rtol=1e-6, atol=1e-6)
  assert step.kernel_count is not None


def test_gradients_of_every_collective(small_pieces):
  rng = np.random.default_rng(4)
  xs = [rng.standard_normal(37).astype(np.float32) for _ in range(3)]
  ws = [rng.standard_normal(37).astype(np.float32) for _ in range(3)]
  def leaves(): return [Tensor(x, device=CPUS[i], requires_grad=True) for i, x in enumerate(xs)]
  def weighted(outs, w=ws): return sum(((o.reshape(-1) * Tensor(w[i][:o.numel()], device=CPUS[i])).sum().to("CPU:0") for i, o in enumerate(outs)))
  # all-reduce mean: d/dx_j sum_i w_i . mean(x) = sum_i w_i / n
  ts = leaves(); weighted(all_reduce(ts, "mean")).backward()
  for t in ts: np.testing.assert_allclose(t.grad.numpy(), np.sum(ws, 0) / 3, rtol=1e-5)
  # only one output used: every input still gets its gradient (the unused outputs count as zero)
  ts = leaves(); out = all_reduce(ts, "sum")
  (out[1] * Tensor(ws[1], device=CPUS[1])).sum().backward()
  for t in ts: np.testing.assert_allclose(t.grad.numpy(), ws[1], rtol=1e-6)
  # all-reduce max: the gradient goes to the input that holds the maximum
  ts = leaves(); weighted(all_reduce(ts, "max")).backward()
  arg = np.argmax(xs, 0)
  for j, t in enumerate(ts): np.testing.assert_allclose(t.grad.numpy(), np.where(arg == j, np.sum(ws, 0), 0), rtol=1e-5)
  # reduce-scatter: every input gets the concatenation of the parts' gradients
  ts = leaves(); parts = reduce_scatter(ts, "sum")
  pw = [rng.standard_normal(p.numel()).astype(np.float32) for p in parts]
  weighted(parts, pw).backward()
  for t in ts: np.testing.assert_allclose(t.grad.numpy(), np.concatenate(pw), rtol=1e-6)
  # all-gather: chunk j gets the sum over devices of its slice of their gradients
  big = [rng.standard_normal(111).astype(np.float32) for _ in range(3)]
  ts = leaves(); weighted(all_gather(ts), big).backward()
  for j, t in enumerate(ts): np.testing.assert_allclose(t.grad.numpy(), np.sum(big, 0)[37 * j:37 * (j + 1)], rtol=1e-5)


def test_bad_input_is_a_clear_error():
  a, b = Tensor(np.ones(3, np.float32), device="CPU:0"), Tensor(np.ones(4, np.float32), device="CPU:1")
  with pytest.raises(ValueError, match="equal shapes"): all_reduce([a, b])
  with pytest.raises(ValueError, match="one tensor per device"): all_reduce([a, a])
  with pytest.raises(ValueError, match="op 'avg'"): all_reduce([a, Tensor(np.ones(3, np.float32), device="CPU:1")], "avg")


def _cuda_devices(monkeypatch, n):
  from trainer.core.runtime.cuda import cuda_unavailable_reason, physical_device_count
  if cuda_unavailable_reason(): pytest.skip(cuda_unavailable_reason())
  if physical_device_count() < n: monkeypatch.setenv("TRAINER_CUDA_DEVICES", str(n))
  return [f"CUDA:{i}" for i in range(n)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "int32"])
def test_cuda_collectives_match_the_cpu(monkeypatch, small_pieces, dtype):
  """On CUDA devices (several virtual ones per GPU where the host has fewer): the same bits as the
  CPU devices, eager and replayed, with copy streams and events ordering the hops."""
  devs = _cuda_devices(monkeypatch, 3)
  rng = np.random.default_rng(5)
  xs = [(rng.integers(-100, 100, 4099) if dtype == "int32" else rng.standard_normal(4099)).astype(np.float32) for _ in range(3)]
  want = [o.numpy() for o in all_reduce([Tensor(x, device=CPUS[i], dtype=dtype) for i, x in enumerate(xs)], "mean")]
  step = jit(lambda *ts: all_reduce(list(ts), "mean") + all_gather(reduce_scatter(list(ts), "sum")))
  for _ in range(3):
    out = step(*[Tensor(x, device=devs[i], dtype=dtype) for i, x in enumerate(xs)])
    for o, w in zip(out[:3], want): np.testing.assert_array_equal(o.numpy(), w)
    for o in out[3:]: np.testing.assert_array_equal(o.numpy(), out[3].numpy())
