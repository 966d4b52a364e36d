"""The project's own source files and their digest: what a run records as the code that ran (a submission's
implementation folder must hold exactly that code; hosts of one multi-host run must all run it)."""
from __future__ import annotations
import functools, hashlib, os

SUFFIXES = (".py", ".c", ".h", ".yaml")


def project_root() -> str:
  """The folder that holds launch.py and the trainer package."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files() -> list[str]:
  """Paths relative to project_root(): launch.py, pyproject.toml, README.md, the recipes and the trainer package's
  sources (.py, and the C the AMD simulator builds), sorted."""
  root = project_root()
  files = [f for f in ("launch.py", "pyproject.toml", "README.md") if os.path.isfile(os.path.join(root, f))]
  for top in ("recipes", "trainer"):
    for d, dirs, names in os.walk(os.path.join(root, top)):
      dirs[:] = sorted(x for x in dirs if x != "__pycache__")
      files += [os.path.relpath(os.path.join(d, n), root) for n in names if n.endswith(SUFFIXES)]
  return sorted(files)


@functools.cache
def source_digest() -> str:
  """sha256 over every source file's path and bytes (hex)."""
  h, root = hashlib.sha256(), project_root()
  for rel in source_files():
    with open(os.path.join(root, rel), "rb") as f: data = f.read()
    h.update(f"{rel}\0{len(data)}\0".encode()); h.update(data)
  return h.hexdigest()
