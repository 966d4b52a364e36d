"""AMD kernels: the codegen's kinds of kernel (elementwise, short and long reductions, MFMA and WMMA
matrix products, the collectives' accumulate) compile for gfx942 and gfx1100 (gfx950 where the
compiler knows it), our ELF reader sees in each code object what the compiler's own llvm-readelf
prints, and the matrix-core kernels compute on the simulated GPUs (CDNA wave 64 MFMA, RDNA3 wave 32
WMMA) what numpy does in float64, within float32 rounding."""
import numpy as np
import pytest
from trainer.core import Tensor, dtypes
from trainer.core.codegen import amd as cg
from trainer.core.dtypes import bf16_to_f32, f32_to_bf16
from trainer.core.schedule import create_schedule, Kernel
from trainer.drivers.amd import compiler
from amd_helpers import needs_clang, check_code_objects, readelf_path

TARGETS = ["gfx942", "gfx1100"] + (["gfx950"] if compiler.supports("gfx950") else [])


def kernels(dtype="float32"):
  """A few scheduled kernels of each kind (on the CPU: only their structure matters here)."""
  r = np.random.default_rng(0)
  a, b = Tensor(r.standard_normal((33, 20)).astype(np.float32), dtype=dtype), Tensor(r.standard_normal((20, 17)).astype(np.float32), dtype=dtype)
  outs = [(a * 2 + 1).exp(), a.sum(1), a.amax(0), a @ b, (a.T @ a).sum()]
  return [it for o in outs for it in create_schedule([o.lazydata]) if isinstance(it, Kernel)]


@needs_clang
@pytest.mark.skipif(readelf_path() is None, reason="no llvm-readelf (apt-get install llvm-19)")
def test_every_kind_compiles_and_our_reader_agrees_with_readelf(tmp_path):
  paths, count = [], 0
  for target in TARGETS:
    rs = [cg.render(k, target) for dt in ("float32", "float16", "bfloat16") for k in kernels(dt)]
    rs.append(cg.render_accumulate(dtypes.bfloat16, "sum", 0.5))
    kinds = "".join(r.body for r in rs)
    assert ("K_MFMA" in kinds) == (target != "gfx1100") and ("K_WMMA" in kinds) == (target == "gfx1100")
    p = tmp_path / f"{target}.hsaco"
    p.write_bytes(compiler.compile_source(cg.source(rs), target))
    paths.append(str(p)); count += len({r.name for r in rs})
  assert check_code_objects(paths) == count


def matmul_case(dtype, seed=0):
  r = np.random.default_rng(seed)
  a, b = r.standard_normal((2, 37, 45)), r.standard_normal((2, 45, 29))   # batched, tile edges everywhere
  if dtype == "bfloat16": a, b = (bf16_to_f32(f32_to_bf16(x.astype(np.float32))).astype(np.float64) for x in (a, b))
  else: a, b = a.astype(dtype).astype(np.float64), b.astype(dtype).astype(np.float64)
  return a, b


@needs_clang
@pytest.mark.parametrize("kind,dtype", [("gfx942", "float32"), ("gfx942", "bfloat16"), ("gfx1100", "float16"), ("gfx1100", "bfloat16")])
def test_matrix_cores_on_the_simulated_gpus(machine, kind, dtype):
  sim = machine([kind])
  a, b = matmul_case(dtype)
  out = Tensor(a.astype(np.float32), dtype=dtype, device="AMD:0") @ Tensor(b.astype(np.float32), dtype=dtype, device="AMD:0")
  [k] = [it for it in create_schedule([out.lazydata]) if isinstance(it, Kernel)]
  assert ("K_MFMA" if kind == "gfx942" else "K_WMMA") in cg.render(k, kind).body
  got = out.float().numpy().astype(np.float64)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)   # bf16/f16 outputs round to 8/11 bits
  np.testing.assert_allclose(got, a @ b, **tol)
  assert sim.stats["dispatches"] >= 1
