"""The core op and gradient suites (tests/core: elementwise, reductions, matmul, movement, dtypes,
functional) on AMD:0 of a simulated gfx942, as bench/gpu_check.sh runs them on CUDA:0: TRAINER_DEVICE
makes AMD:0 every test's default device (the CPU-interpreter half of each test is deselected). They
run as two pytest processes at once (compiling is most of their time, and CI has two cores). Every
kernel they use is also compiled for gfx1100 (and gfx950 where the compiler knows it), and our ELF
reader's view of every resulting code object must equal llvm-readelf's."""
import json, os, subprocess, sys
from amd_helpers import needs_clang, check_code_objects, readelf_path
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARDS = [["test_elementwise.py", "test_movement.py"], ["test_dtypes.py", "test_reduce.py", "test_matmul.py", "test_functional.py"]]   # even halves of the work


@needs_clang
@pytest.mark.skipif(readelf_path() is None, reason="no llvm-readelf (apt-get install llvm-19)")
def test_op_suites_pass_on_amd0_and_every_kernel_compiles_for_each_target(tmp_path):
  procs = []
  for i, files in enumerate(SHARDS):
    env = {**os.environ, "TRAINER_DEVICE": "AMD:0", "TRAINER_AMD_SIM": "gfx942", "TRAINER_CACHE": str(tmp_path / f"cache{i}"),
           "PYTHONPATH": os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "kernel_targets", "-k", "not interp",
           f"--amd-kernel-report={tmp_path / f'report{i}.json'}", *[os.path.join(ROOT, "tests", "core", f) for f in files]]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=1200)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0 and " passed" in out.splitlines()[-1] and "failed" not in out.splitlines()[-1], out[-6000:]
  reports = [json.load(open(tmp_path / f"report{i}.json")) for i in range(len(SHARDS))]
  paths = [p for r in reports for ps in r["paths"].values() for p in ps]
  kernels = {t: sum(r["kernels"][t] for r in reports) for t in reports[0]["kernels"]}
  assert kernels["gfx942"] > 300 and kernels["gfx1100"] > 300, kernels
  assert check_code_objects(paths) == sum(kernels.values())
