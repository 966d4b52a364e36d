"""The hosts of one run: one process per host, each driving its own devices, started by `mpirun` or Slurm's `srun`.

Between hosts everything goes over MPI (mpi4py): the rendezvous (MPI_Init through the launcher), control (barriers,
broadcasts, agreed decisions), tear-down on failure, and the gradient data of the host layer (across_hosts.py).
One host needs none of it: `SingleHost` imports nothing (trainer.cli picks it when the launcher started one process).

A run on several hosts must never leave a host waiting in a collective for one that is gone: every uncaught
exception, in any thread, becomes one line on stderr naming the host and `MPI_Abort` with our exit code (2 bad
input, 3 out of memory, 1 otherwise); a watchdog (Watchdog) aborts a step that does not finish in time, naming the
hosts that did not arrive. (With mpi4py an exception that reaches interpreter exit would call MPI_Finalize while the
other hosts wait in a collective: the job would hang; see ../shared/notes/MULTIHOST.md section 3.5.)

Data operations run on their own communicator in a background thread, one after the other in the order they were
issued (the same on every host), so a blocking MPI call proceeds beside the device work (Open MPI has no progress
thread); the time the main thread then waits for them is the communication time that stayed exposed.
"""
from __future__ import annotations
import os, sys, threading, time, traceback
from concurrent.futures import Future
import queue
import numpy as np

FAIL_GRACE_S = 1.0
LAUNCH_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS")   # mpirun (Open MPI, MPICH), srun
LAUNCH_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def launched() -> tuple[int, int]:
  """(rank, size) of this process as the launcher's environment says, without MPI: (0, 1) when started alone.
  Slurm's variables count only inside a job step (srun), not in the batch script itself."""
  in_step = "SLURM_STEP_ID" in os.environ
  for size_var, rank_var in zip(LAUNCH_SIZE_VARS, LAUNCH_RANK_VARS):
    if size_var.startswith("SLURM") and not in_step: continue
    if size_var in os.environ and rank_var in os.environ:
      try: return int(os.environ[rank_var]), int(os.environ[size_var])
      except ValueError: continue
  return 0, 1


class HostError(RuntimeError):
  """The MPI library cannot carry the host layer (one line)."""


class SingleHost:
  """The only host: every operation is local and free."""
  rank, size = 0, 1
  exposed_s = 0.0   # communication time the main thread waited for (none on one host)

  def barrier(self): pass
  def bcast(self, obj): return obj
  def allgather(self, obj): return [obj]
  def sum(self, values): return np.asarray(values, np.float64)
  def submit(self, fn): f = Future(); f.set_result(fn(None)); return f
  def wait(self, f): return f.result()
  def watch(self, what: str, timeout_s: float): pass
  def arrived(self, what: str): pass
  def close(self): pass


class MPIHosts:
  """H processes of one MPI job, one per host. `rank` is this host's index (host 0 writes the logs and results)."""

  def __init__(self, timeout_s: float):
    import mpi4py
    mpi4py.rc.thread_level = "multiple"   # the data thread and the watchdog call MPI beside the main thread
    mpi4py.rc.finalize = False            # a host never reaches MPI_Finalize after an error (it aborts instead)
    from mpi4py import MPI
    self.MPI = MPI
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
      raise HostError(f"the MPI library gives thread level {MPI.Query_thread()}, the host layer needs MPI_THREAD_MULTIPLE")
    world = MPI.COMM_WORLD
    self.rank, self.size = world.Get_rank(), world.Get_size()
    self.control, self.data, self.beats = world.Dup(), world.Dup(), world.Dup()
    self.exposed_s = 0.0
    self._ops: queue.Queue = queue.Queue()
    self._worker = threading.Thread(target=self._work, name="hosts-data", daemon=True)
    self._worker.start()
    self.watchdog = Watchdog(self, timeout_s)
    install_abort_hooks(self)

  # ---- control (main thread) ----
  def barrier(self): self.control.Barrier()
  def bcast(self, obj): return self.control.bcast(obj, root=0)
  def allgather(self, obj) -> list: return self.control.allgather(obj)

  def sum(self, values) -> np.ndarray:
    """Element-wise sum over hosts of a small float64 vector (losses, counts, flags): every host gets the same."""
    v = np.ascontiguousarray(values, np.float64)
    out = np.empty_like(v)
    self.control.Allreduce(v, out, op=self.MPI.SUM)
    return out

  # ---- data (background thread, in issue order) ----
  def submit(self, fn) -> Future:
    """Run fn(data communicator) on the data thread after everything submitted before it; its Future."""
    f: Future = Future()
    self._ops.put((fn, f))
    return f

  def _work(self):
    while True:
      fn, f = self._ops.get()
      if fn is None: return
      try: f.set_result(fn(self.data))
      except BaseException as e:   # noqa: B036 - an MPI error on the data thread fails the job like any other
        f.set_exception(e)

  def wait(self, f: Future):
    """The Future's result; the time spent waiting counts as exposed communication."""
    t = time.perf_counter()
    try: return f.result()
    finally: self.exposed_s += time.perf_counter() - t

  # ---- watchdog ----
  def watch(self, what: str, timeout_s: float): self.watchdog.start(what, timeout_s)
  def arrived(self, what: str): self.watchdog.stop(what)

  # ---- failure ----
  def fail(self, code: int, message: str):
    """One line naming this host, then the whole job ends with `code`. Hosts other than 0 first give host 0 a moment:
    when every host hits the same error, host 0's line is the one printed before the job ends."""
    if self.rank != 0: time.sleep(FAIL_GRACE_S)
    sys.stderr.write(f"{message} (host {self.rank} of {self.size})\n"); sys.stderr.flush()
    self.MPI.COMM_WORLD.Abort(code)

  def close(self):
    """The end of the job on every host (a finished run, or an error all hosts agree on): stop the threads and
    finalize MPI (which a host must do before it exits, unless it aborts)."""
    self.watchdog.close()
    self._ops.put((None, None))
    self._worker.join()
    self.control.Barrier()
    self.MPI.Finalize()


class Watchdog:
  """Ends the job when a watched stretch of work (a training step, an evaluation, a checkpoint) takes longer than its
  timeout. Each host tells every other one, without blocking, which stretch it has reached (a heartbeat on its own
  communicator); the watchdog that fires names the hosts that have not reached it. Host 0 reports first; the others
  wait a little longer, so that the one line comes from host 0 unless host 0 is the one that hangs."""
  GRACE_S = 3.0

  def __init__(self, hosts: MPIHosts, default_s: float):
    self.hosts, self.default_s = hosts, default_s
    self.reached = [0] * hosts.size           # the number of the stretch each host has reached
    self.count, self.what, self.deadline, self.sending = 0, "", None, []
    self.lock = threading.Lock()
    self.closed = False
    self.thread = threading.Thread(target=self._run, name="hosts-watchdog", daemon=True)
    self.thread.start()

  def start(self, what: str, timeout_s: float):
    h = self.hosts
    with self.lock:
      self.count += 1
      self.what = what
      self.reached[h.rank] = self.count
      self.deadline = time.monotonic() + timeout_s + (0 if h.rank == 0 else self.GRACE_S)
    beat = np.array([self.count], np.int64)   # kept, with its requests, until the sends are done
    self.sending = [(r, b) for r, b in self.sending if not r.Test()] + \
                   [(h.beats.Isend(beat, dest=peer, tag=1), beat) for peer in range(h.size) if peer != h.rank]

  def stop(self, what: str):
    with self.lock: self.deadline = None

  def close(self):
    self.closed = True
    self.thread.join()

  def _drain(self):
    h = self.hosts
    status = h.MPI.Status()
    while h.beats.Iprobe(source=h.MPI.ANY_SOURCE, tag=1, status=status):
      buf = np.empty(1, np.int64)
      h.beats.Recv(buf, source=status.Get_source(), tag=1)
      self.reached[status.Get_source()] = max(self.reached[status.Get_source()], int(buf[0]))

  def _run(self):
    while not self.closed:
      time.sleep(0.1)
      self._drain()
      with self.lock:
        late = self.deadline is not None and time.monotonic() > self.deadline
        what, count = self.what, self.count
      if late:
        missing = [p for p, c in enumerate(self.reached) if c < count]
        self.hosts.fail(1, f"error: {what} did not finish within the watchdog's limit (mesh.timeout_s): "
                           + (f"host{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not arrive" if missing
                              else "every host arrived; a collective between them did not finish"))


def exit_code(e: BaseException) -> int:
  """The launcher's exit code for an error: 2 bad input, 3 out of memory, 1 otherwise."""
  from ..core.device import OutOfMemoryError
  from ..config import ConfigError
  if isinstance(e, OutOfMemoryError): return 3
  if isinstance(e, (ConfigError, FileNotFoundError, ValueError)): return 2
  return 1


def install_abort_hooks(hosts: MPIHosts):
  """Uncaught exceptions in any thread end the job (one line, MPI_Abort) instead of leaving the others waiting.
  TRAINER_TRACEBACK=1 prints the traceback first."""
  def report(kind, value, tb):
    if os.environ.get("TRAINER_TRACEBACK"): traceback.print_exception(kind, value, tb)
    hosts.fail(exit_code(value), f"error: {kind.__name__}: {value}")
  sys.excepthook = report
  threading.excepthook = lambda args: report(args.exc_type, args.exc_value, args.exc_traceback)
