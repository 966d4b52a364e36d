"""Run by tests/multihost/test_across_hosts.py under mpirun: each process is one host with G CPU devices; every
collective across the hosts is compared with numpy's float64 result over all hosts' data; prints OK or raises."""
import sys
import numpy as np
from trainer.core import Tensor
from trainer.parallel import hosts as H
from trainer.parallel import across_hosts as X

G, n = int(sys.argv[1]), int(sys.argv[2])
hosts = H.MPIHosts(60.0)
assert hosts.size == int(sys.argv[3])
h, nh = hosts.rank, hosts.size
devices = [f"CPU:{d}" for d in range(G)]
data = [[np.random.default_rng([host, d, n]).standard_normal(n).astype(np.float32) for d in range(G)] for host in range(nh)]
total = sum(x.astype(np.float64) for rows in data for x in rows)

for dtype, tol in (("float32", 1e-5), ("bfloat16", 3e-2)):
  xs = [Tensor(data[h][d], device=devices[d], dtype=dtype) for d in range(G)]
  ref = total if dtype == "float32" else sum(Tensor(x, dtype="bfloat16").float().numpy().astype(np.float64) for rows in data for x in rows)
  sums, means = X.exchange([X.all_reduce(xs, hosts, "sum"), X.all_reduce(xs, hosts, "mean")])
  for d in range(G):
    np.testing.assert_allclose(sums[d].float().numpy(), ref, rtol=tol, atol=tol * 4)
    np.testing.assert_allclose(means[d].float().numpy(), ref / (G * nh), rtol=tol, atol=tol)
  (pieces,) = X.exchange([X.reduce_scatter(xs, hosts, "mean")])
  owned = X.zero1_bounds(n, G, nh)[h]
  for d, (lo, hi) in enumerate(owned):
    np.testing.assert_allclose(pieces[d].float().numpy(), ref[lo:hi] / (G * nh), rtol=tol, atol=tol)
  mine = [Tensor(total[lo:hi] + 100 * (h + 1), device=devices[d], dtype=dtype) for d, (lo, hi) in enumerate(owned)]
  (full,) = X.exchange([X.all_gather(mine, hosts, n)])
  want = np.concatenate([total[lo:hi] + 100 * (hh + 1) for d in range(G) for hh in range(nh) for lo, hi in [X.zero1_bounds(n, G, nh)[hh][d]]])
  for d in range(G): np.testing.assert_allclose(full[d].float().numpy(), want, rtol=tol, atol=tol * 100)
hosts.close()
print(f"OK host {h}", flush=True)
