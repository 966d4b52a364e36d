"""Runtimes: one per backend, each implementing trainer.core.device.Runtime. A backend is a module
here, imported on the first use of one of its devices; importing it registers it with core.device.
A new backend adds its module and its line below, and edits no other backend's file."""
import importlib

BACKENDS = {"CPU": "cpu", "CUDA": "cuda", "AMD": "amd"}   # device name -> module of this package


def load(name: str):
  """Import the backend `name` (which registers it)."""
  importlib.import_module(f"{__name__}.{BACKENDS[name]}")
