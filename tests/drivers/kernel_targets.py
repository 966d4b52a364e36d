"""pytest plugin for a run of the op suites on AMD:0 (test_op_suites.py starts it): each kernel the AMD
runtime compiles for the simulated GPU is also rendered for the other targets (gfx1100, and gfx950
where the compiler knows it); when the session ends they are compiled, a few hundred per code object,
and a JSON report lists every code object of the run by target (the device's own, from the run's
compile cache, included) for the ELF checks."""
import glob, json, os
from trainer.core.codegen import amd as cg
from trainer.core.runtime import amd as amd_runtime
from trainer.drivers.amd import compiler
from trainer.drivers.amd.elf import CodeObject

PER_CODE_OBJECT = 400     # kernels per code object of the extra targets
_rendered: dict = {}


def pytest_addoption(parser):
  parser.addoption("--amd-kernel-report", help="where to write the JSON list of code objects")


def pytest_configure(config):
  others = [t for t in ("gfx1100", "gfx950") if compiler.supports(t)]
  for t in others: _rendered[t] = []
  own = amd_runtime.AMDRuntime.compile
  def compile(self, kernel, name):
    for t in others: _rendered[t].append(cg.render(kernel, t))
    return own(self, kernel, name)
  amd_runtime.AMDRuntime.compile = compile


def pytest_sessionfinish(session):
  path = session.config.getoption("--amd-kernel-report")
  if not path: return
  out, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
  report = {"gfx942": sorted(glob.glob(os.path.join(compiler.CACHE, "*.hsaco")))}
  for t, rs in _rendered.items():
    rs = list({r.name: r for r in rs}.values())
    report[t] = []
    for i in range(0, len(rs), PER_CODE_OBJECT):
      p = os.path.join(out, f"{stem}_{t}_{i // PER_CODE_OBJECT}.hsaco")
      with open(p, "wb") as f: f.write(compiler.compile_source(cg.source(rs[i:i + PER_CODE_OBJECT]), t))
      report[t].append(p)
  report = {"paths": report, "kernels": {t: sum(len(CodeObject(open(p, "rb").read()).kernels) for p in ps) for t, ps in report.items()}}
  with open(path, "w") as f: json.dump(report, f)
