"""The collectives across hosts (trainer/parallel/across_hosts.py) under mpirun on this machine: all-reduce (sum and
mean), ZeRO-1's reduce-scatter and all-gather, in float32 and bfloat16, against numpy over every host's data."""
import os
import pytest
from mpi import mpirun

WORKER = os.path.join(os.path.dirname(__file__), "collectives_worker.py")


@pytest.mark.parametrize("hosts,devices,n,transport", [(2, 2, 1001, "tcp"), (2, 3, 4097, "sm"), (4, 1, 777, "sm")])
def test_collectives_across_hosts_match_numpy(tmp_path, hosts, devices, n, transport):
  r = mpirun(hosts, [WORKER, devices, n, hosts], tmp_path, timeout=120, transport=transport)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  assert sorted(l for l in r.stdout.splitlines() if l.startswith("OK")) == [f"OK host {h}" for h in range(hosts)]
