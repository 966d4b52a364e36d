"""bfloat16 compute on the CPU has the numerics of a numpy emulation that rounds every matmul input (and
every stored bfloat16 result) to bfloat16 and computes in higher precision: a norm, a SwiGLU MLP and a
residual, as a Llama layer's second half runs them with bfloat16 weights."""
import numpy as np
from trainer.core import Tensor
from trainer.nn import Linear, RMSNorm


def bf16(x):
  """Round to bfloat16 (nearest even) through float32, as numpy values."""
  u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
  return u.astype(np.uint32).view(np.float32).astype(np.float64)


def test_bf16_mlp_matches_an_emulation_that_rounds_every_matmul_input():
  rng = np.random.default_rng(3)
  D, F, N = 96, 160, 37
  Tensor.manual_seed(4)
  norm, gate, up, down = RMSNorm(D, 1e-5, dtype="bfloat16"), *(Linear(D, F, bias=False, dtype="bfloat16", std=0.05) for _ in range(2)), \
    Linear(F, D, bias=False, dtype="bfloat16", std=0.05)
  x = rng.standard_normal((N, D)).astype(np.float32)
  xt = Tensor(x, dtype="bfloat16")
  n = norm(xt)
  out = (xt + down(gate(n).silu() * up(n))).numpy().astype(np.float64)

  w = {k: m.weight.numpy().astype(np.float64) for k, m in (("g", gate), ("u", up), ("d", down))}
  xe = bf16(x)
  ne = bf16(bf16(xe / np.sqrt((xe * xe).mean(-1, keepdims=True) + 1e-5)) * norm.weight.numpy())   # norm in float, stored bf16
  g, u = bf16(ne @ w["g"].T), bf16(ne @ w["u"].T)                                                  # bf16 inputs, stored bf16
  h = bf16(g / (1 + np.exp(-g)) * u)                                                              # fused: rounded once, when stored
  emul = bf16(xe + bf16(h @ w["d"].T))
  exact = x + (lambda nn: ((lambda gg: gg / (1 + np.exp(-gg)))(nn @ w["g"].T) * (nn @ w["u"].T)) @ w["d"].T)(
    x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * norm.weight.numpy())
  scale = np.abs(emul).max()

  assert np.mean(out == emul) > 0.9                             # nearly every element: the emulation's bits
  assert np.abs(out - emul).max() <= 2 ** -6 * scale            # the rest: a bf16 rounding flipped by float32 accumulation
  assert np.abs(out - emul).mean() < 0.1 * np.abs(out - exact).mean()   # and far from what unrounded inputs would give
