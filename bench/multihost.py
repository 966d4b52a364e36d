"""Across hosts on this machine (processes under mpirun, traffic on loopback): the bus bandwidth of our cross-host
gradient reduction (trainer.parallel.across_hosts, as DataParallel runs it) next to a bare MPI_Allreduce of the same
bytes, over shared memory and over TCP on loopback, at 16 and 128 MiB; and the tiny Llama step of the launcher's loop
(trainer.loop.Run) at 1 host x 2 devices against 2 hosts x 1 device, with the communication time left exposed.
Usage: python bench/multihost.py      (it starts mpirun itself; needs pip install -e '.[multihost]')
"""
import json, os, statistics, subprocess, sys, time
import numpy as np
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

SIZES_MIB = (16, 128)
REPS = {16: 20, 128: 6}
TRANSPORTS = {"shared memory": ["--mca", "btl", "self,sm"], "TCP over loopback": ["--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]}
STEP = ["model.n_layers=2", "model.dim=128", "model.ffn_dim=384", "train.global_batch_size=16", "train.micro_batch_size=8"]


def busbw(nbytes, seconds, n): return nbytes / seconds * 2 * (n - 1) / n / 1e9   # nccl-tests' convention, GB/s


def worker_allreduce():
  """Under mpirun: median time of a bare MPI_Allreduce and of ours on one CPU device per host, per size."""
  from trainer.core import Tensor, jit
  from trainer.parallel.hosts import MPIHosts
  from trainer.parallel import across_hosts
  hosts = MPIHosts(600.0)
  comm, MPI = hosts.control, hosts.MPI
  out = {}
  for mib in SIZES_MIB:
    n = mib * 2**20 // 4
    x = np.random.default_rng(hosts.rank).standard_normal(n).astype(np.float32)
    bare, ours = [], []
    t = Tensor(x, device="CPU:0").realize()
    reduce = jit(lambda: across_hosts.exchange([across_hosts.all_reduce([t], hosts, "sum")])[0][0])   # replayed, as in the step
    buf = np.empty_like(x)
    for rep in range(REPS[mib] + 3):
      buf[:] = x; comm.Barrier()
      s = time.perf_counter(); comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM); bare.append(time.perf_counter() - s)
      comm.Barrier()
      s = time.perf_counter(); r = reduce(); ours.append(time.perf_counter() - s)
      np.testing.assert_allclose(r.numpy(), buf, rtol=1e-6)
    slowest = lambda ts: max(comm.allgather(statistics.median(ts[3:])))
    out[mib] = (slowest(bare), slowest(ours))
  if hosts.rank == 0: print("RESULT " + json.dumps(out), flush=True)
  hosts.close()


def worker_step():
  """Under mpirun (or alone): the launcher's tiny Llama step at this mesh; median step time and exposed ms."""
  from trainer.config import load_config
  from trainer.loop import Run
  from trainer.parallel.hosts import MPIHosts, SingleHost, launched
  hosts = MPIHosts(600.0) if launched()[1] > 1 else SingleHost()
  tmp = sys.argv[3]
  cfg = load_config(os.path.join(ROOT, "recipes/llama_tiny.yaml"), STEP + [f"mesh.hosts={hosts.size}", f"mesh.dp={sys.argv[2]}", f"checkpoint.dir={tmp}/ck{hosts.rank}",
                                                                          "checkpoint.every_steps=100000"])
  run = Run(cfg, os.path.join(tmp, "log"), None, progress=False, hosts=hosts)
  run.init()
  times = []
  for s in range(13):
    t = time.perf_counter(); run.train(max_steps=s + 1); times.append(time.perf_counter() - t)
  if hosts.rank == 0:
    print("RESULT " + json.dumps({"step_s": statistics.median(times[3:]), "exposed_ms": statistics.median(run.exposed_ms[3:]) if run.exposed_ms else 0.0,
                                  "kernels": run.step_fn.kernel_count}), flush=True)
  hosts.close()


def launch(n, args, mca=()):
  import shutil, tempfile
  exe = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=ROOT)
  with tempfile.TemporaryDirectory() as tmp:
    cmd = ([exe, "--oversubscribe", "-n", str(n), *mca] if n > 1 else []) + [sys.executable, __file__, *args, tmp]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
  line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
  if r.returncode or not line: raise RuntimeError(f"{cmd} failed: {r.stderr[-2000:]}")
  return json.loads(line[0][7:])


if __name__ == "__main__":
  if sys.argv[1:2] == ["--allreduce"]: worker_allreduce(); sys.exit()
  if sys.argv[1:2] == ["--step"]: worker_step(); sys.exit()
  from cpu_core import cpu_name
  print(f"device: CPU = {cpu_name()}, {os.cpu_count()} cores; 2 processes as hosts on this machine, loopback only")
  print("| transport | bytes | bare MPI_Allreduce busbw | ours busbw | ratio |")
  print("| --- | --- | --- | --- | --- |")
  for name, mca in TRANSPORTS.items():
    res = launch(2, ["--allreduce"], mca)
    for mib in SIZES_MIB:
      bare, ours = res[str(mib)]
      nbytes = mib * 2**20
      print(f"| {name} | {mib} MiB | {busbw(nbytes, bare, 2):.2f} GB/s ({bare * 1e3:.1f} ms) | {busbw(nbytes, ours, 2):.2f} GB/s ({ours * 1e3:.1f} ms) | {bare / ours:.2f}x |", flush=True)
  one = launch(1, ["--step", "2"])
  two = launch(2, ["--step", "1"], TRANSPORTS["shared memory"])
  print(f"tiny Llama step ({', '.join(STEP)}): 1 host x 2 devices {one['step_s'] * 1e3:.1f} ms; 2 hosts x 1 device "
        f"{two['step_s'] * 1e3:.1f} ms, of it {two['exposed_ms']:.1f} ms communication left exposed ({one['kernels']} and {two['kernels']} replayed items)")
