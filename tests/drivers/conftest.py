"""Fixtures of the AMD driver tests: a simulated machine of chosen GPU kinds for the test (the AMD
runtimes, the driver's process state and the OS seam all made anew, and dropped afterwards)."""
import pytest
from trainer.core import device
from trainer.drivers.amd import os_seam
from trainer.drivers.amd import device as driver
from trainer.drivers.amd.sim.kernel import SimKernel


def _forget():
  os_seam.reset(); driver.reset()
  for d in [d for d in device._runtimes if d.startswith("AMD:")]: del device._runtimes[d]


@pytest.fixture
def machine():
  """machine(kinds, **sim options) -> the SimKernel behind AMD:0.. for this test."""
  def make(kinds, **kw):
    _forget()
    os_seam._system = SimKernel(list(kinds), **kw)
    return os_seam._system
  yield make
  _forget()
