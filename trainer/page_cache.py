"""Dropping the page cache before a benchmark run, as the MLPerf training rules require of every run (the reference
run scripts do `sync` and `vm.drop_caches=3` before each one): data read by an earlier run must not be served from
memory. Writing /proc/sys/vm/drop_caches needs root on the host; in a container it is usually refused."""
from __future__ import annotations
import os

DROP_CACHES = "/proc/sys/vm/drop_caches"
HOW = "run `sync; echo 3 | sudo tee /proc/sys/vm/drop_caches` on the host before each run, or launch as root"


def drop_page_cache(path: str | None = None) -> tuple[bool, str]:
  """sync, then write 3 (page cache, dentries and inodes) to drop_caches: (True, '') when it was done, else (False, why)."""
  path = path or DROP_CACHES
  os.sync()
  try:
    with open(path, "w") as f: f.write("3\n")
  except OSError as e:
    return False, f"{path}: {e.strerror or e}"
  return True, ""
