"""Starting several "hosts" on this machine for the multi-host tests: `mpirun --oversubscribe` with every process's
traffic on loopback (the TCP transport restricted to `lo`, or shared memory), a bounded time, and every process it
started gone afterwards. Skips when mpi4py or mpirun is missing."""
import os, shutil, signal, subprocess, sys
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mpirun_path():
  try:
    import mpi4py  # noqa: F401
  except ImportError:
    pytest.skip("mpi4py is not installed (pip install -e '.[multihost]')")
  exe = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
  if exe is None: pytest.skip("no mpirun (pip install -e '.[multihost]' brings Open MPI's)")
  return exe


def mpirun(n: int, args: list, cwd, timeout: float = 300, transport: str = "tcp", env: dict | None = None) -> subprocess.CompletedProcess:
  """Run `python args...` as n MPI processes; transport 'tcp' (over lo: what crosses real hosts) or 'sm'."""
  return mpmd(["-n", str(n), sys.executable, *map(str, args)], cwd, timeout, transport, env)


def mpmd(apps: list, cwd, timeout: float = 300, transport: str = "tcp", env: dict | None = None) -> subprocess.CompletedProcess:
  """mpirun with its application contexts (`-n 1 python a.py : -n 1 python b.py`) as given; see mpirun."""
  mca = ["--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"] if transport == "tcp" else ["--mca", "btl", "self,sm"]
  full = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_mpi_yield_when_idle="1",
              PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TRAINER_CPU_DEVICES="8", **(env or {}))
  cmd = [mpirun_path(), "--oversubscribe", *mca, *map(str, apps)]
  p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, start_new_session=True)
  try:
    out, err = p.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    out, err = "", f"timed out after {timeout} s"
  finally:
    try: os.killpg(p.pid, signal.SIGKILL)   # mpirun and every process it started
    except ProcessLookupError: pass
    p.wait()
  return subprocess.CompletedProcess(cmd, p.returncode, out, err)
