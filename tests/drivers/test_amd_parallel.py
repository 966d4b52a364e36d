"""The ring collectives over SDMA peer copies between simulated AMD GPUs: bit-identical to the CPU
devices for every dtype and for sizes that split unevenly (odd chunk sizes, pieces off the
alignment), eagerly and replayed by the JIT; and launch.py training llama_tiny on two simulated GPUs
with dp=2 and tp=2 gives the CPU run's losses (tolerance: rtol 1e-5, float32 sums taken in another
order by the matrix cores; dp=2 has been bit-identical)."""
import os, subprocess, sys
import numpy as np
import pytest
from trainer.core import Tensor, jit
from trainer.parallel import all_reduce, reduce_scatter, all_gather, ring
from amd_helpers import needs_clang

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = ["float32", "bfloat16", "float16", "int32", "int8", "int64", "uint8", "bool"]


@pytest.fixture
def small_pieces(monkeypatch):
  monkeypatch.setattr(ring, "PIECE_BYTES", 256)
  monkeypatch.setattr(ring, "ALIGN", 8)


def data(dtype, n, count, seed):
  rng = np.random.default_rng(seed)
  if dtype == "bool": return [rng.random(n) < 0.3 for _ in range(count)]
  if dtype.startswith(("int", "uint")): return [rng.integers(0, 100 if dtype == "uint8" else 60, n).astype(dtype) for _ in range(count)]
  return [rng.standard_normal(n).astype(np.float32) for _ in range(count)]


@needs_clang
@pytest.mark.parametrize("dtype", DTYPES)
def test_collectives_over_sdma_equal_the_cpu(machine, small_pieces, dtype):
  machine(["gfx942"] * 3)
  n = 1037   # odd: chunks of unequal size, pieces ending off the alignment
  xs = data(dtype, n, 3, seed=len(dtype))
  def run(devs):
    ts = [Tensor(x, device=d, dtype=dtype) for x, d in zip(xs, devs)]
    return [o.numpy() for o in all_reduce(ts, "sum") + all_gather(reduce_scatter(ts, "max")) + all_reduce(ts, "mean" if dtype != "bool" else "max")]
  want, got = run(["CPU:0", "CPU:1", "CPU:2"]), run(["AMD:0", "AMD:1", "AMD:2"])
  for w, g in zip(want, got): np.testing.assert_array_equal(g, w)


@needs_clang
def test_replayed_collectives_on_new_inputs(machine, small_pieces):
  machine(["gfx942", "gfx942"])
  step = jit(lambda a, b: all_reduce([a, b], "sum") + all_gather(reduce_scatter([a * 2, b], "sum")))
  rng = np.random.default_rng(3)
  for _ in range(3):
    xs = [rng.standard_normal((7, 13)).astype(np.float32) for _ in range(2)]
    out = step(*[Tensor(x, device=f"AMD:{i}") for i, x in enumerate(xs)])
    want = [o.numpy() for o in all_reduce([Tensor(x, device=f"CPU:{i}") for i, x in enumerate(xs)], "sum")]
    for o, w in zip(out[:2], want): np.testing.assert_array_equal(o.numpy(), w)
    for o in out[2:]: np.testing.assert_allclose(o.numpy(), (2 * xs[0] + xs[1]).reshape(-1), rtol=1e-6)


LLAMA = [os.path.join(ROOT, "recipes/llama_tiny.yaml"), "--set", "model.n_layers=1", "--set", "model.dim=64", "--set", "model.ffn_dim=128",
         "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=8", "--set", "checkpoint.every_steps=100",
         "--max-steps", "3", "--no-progress", "--print-losses"]


def launch(args, tmp_path, name, env=None):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *LLAMA, *args, "--set", f"checkpoint.dir={tmp_path}/{name}",
                           "--results", str(tmp_path / f"r{name}")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, **(env or {})})


def losses(p) -> list[float]:
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, out[-2000:] + err[-3000:]
  return [float(l.split()[-1]) for l in out.splitlines() if l.startswith("step ")]


@needs_clang
def test_llama_tiny_trains_on_two_simulated_gpus_like_the_cpu(tmp_path):
  """The three runs at once (two cores; most of their time is compiling)."""
  sim = {"TRAINER_AMD_SIM": "gfx942,gfx942"}
  runs = [launch([], tmp_path, "cpu"), launch(["--set", "mesh.device=AMD", "--set", "mesh.dp=2", "--set", "train.micro_batch_size=4"], tmp_path, "dp", sim),
          launch(["--set", "mesh.device=AMD", "--set", "mesh.tp=2"], tmp_path, "tp", sim)]
  cpu, dp, tp = (losses(p) for p in runs)
  assert len(cpu) == 3 and cpu[0] > cpu[-1]
  np.testing.assert_allclose(dp, cpu, rtol=1e-5)
  np.testing.assert_allclose(tp, cpu, rtol=1e-5)
