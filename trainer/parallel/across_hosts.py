"""Collectives over the data-parallel replicas of every host: hierarchical, our ring inside a host, MPI between hosts.

A host holds N replicas (one per local device of a tensor-parallel rank); the job holds H hosts. Global replica
(h, d) is device d of host h, index h * N + d, so the replicas of a 1-host run with H * N devices and of H hosts
with N each read the same samples (trainer.loop).

  all_reduce(xs, hosts, op)   every device gets the sum (or mean) over all H * N replicas:
                              ring reduce-scatter inside the host (device d: chunk d, summed over the host),
                              MPI all-reduce of chunk d across the hosts, ring all-gather inside the host.
  reduce_scatter(xs, hosts)   device d of host h gets its ZeRO-1 piece (zero1_bounds), summed over all replicas
                              (mean: divided by H * N): ring reduce-scatter, then MPI reduce-scatter of chunk d.
  all_gather(pieces, hosts, n) every device gets all n elements from the pieces: MPI all-gather of chunk d
                              across hosts, then ring all-gather inside the host.

Each is two items of the lazy graph, so that the exchanges of a step overlap each other and the device work: the
first (`_Begin`) runs the local ring part and starts the cross-host part on the transport (`StagedMPI`: chunks
staged in host memory, MPI on the hosts' data thread, hosts.py); the second (`_End`) waits for it, which is the
communication time left exposed, and finishes locally. `StagedMPI` is the one place a GPU-direct transport (NCCL,
RCCL) would plug in. `exchange` realizes every begin of a list of
exchanges before any end, so while host 1 waits for the first tensor's all-reduce the later ones are staged.
The two items are also what a JIT replay runs.

Sums cross the hosts in the type they travel in; bfloat16 and float16 are added in float32 and rounded once per
MPI reduction step, as the ring does on each hop. The order of the additions differs from a single host's ring, so
results agree with a 1-host run to rounding, not bit for bit.
"""
from __future__ import annotations
import numpy as np
from ..core import Tensor
from ..core.lazy import LazyBuffer
from ..core.dtypes import dtypes, bf16_to_f32, f32_to_bf16
from ..core import precision
from .ring import RingCollective, bounds

__all__ = ["all_reduce", "reduce_scatter", "all_gather", "zero1_bounds", "exchange"]

MPI_PIECE = 16 << 20   # bytes: the largest MPI all-reduce issued at once (bench/multihost.py: larger ones ran 20% slower)


def zero1_bounds(n: int, local: int, hosts: int) -> list[list[tuple[int, int]]]:
  """[host][device] -> the elements [lo, hi) of a flat tensor of n that global replica (host, device) owns under
  ZeRO-1: the host's ring chunk `device` (bounds(n, local)) cut into `hosts` pieces, piece `host`. With one host
  these are the ring's chunks."""
  out = [[None] * local for _ in range(hosts)]
  for d, (lo, hi) in enumerate(bounds(n, local)):
    for h, (a, b) in enumerate(bounds(hi - lo, hosts)): out[h][d] = (lo + a, lo + b)
  return out


_SUM16 = {}


def _mpi_sum(hosts, dtype):
  """MPI's SUM for 32-bit floats; for bfloat16 / float16 (uint16 storage) an op that adds in float32 and rounds."""
  MPI = hosts.MPI
  if dtype is dtypes.float32: return MPI.SUM
  if dtype.name not in _SUM16:
    to32, to16 = (bf16_to_f32, f32_to_bf16) if dtype is dtypes.bfloat16 else \
                 (lambda a: a.view(np.float16).astype(np.float32), lambda a: a.astype(np.float16).view(np.uint16))
    def add(a, b, _type):
      x, y = np.frombuffer(a, np.uint16), np.frombuffer(b, np.uint16)
      y[:] = to16(to32(x) + to32(y))
    _SUM16[dtype.name] = MPI.Op.Create(add, commute=True)
  return _SUM16[dtype.name]


def _mpi_type(hosts, dtype):
  """The MPI datatype of a storage type: 32-bit floats as such, 16-bit ones as raw 16-bit words."""
  return hosts.MPI.FLOAT if dtype is dtypes.float32 else hosts.MPI.UINT16_T


def _scale(arr: np.ndarray, dtype, scale):
  """arr (storage type) *= scale, rounded once to dtype."""
  if scale is None: return
  if dtype is dtypes.float32: arr *= np.float32(scale)
  elif dtype is dtypes.bfloat16: arr[:] = f32_to_bf16(bf16_to_f32(arr) * np.float32(scale))
  else: arr[:] = (arr.view(np.float16).astype(np.float32) * np.float32(scale)).astype(np.float16).view(np.uint16)


def _host_view(buf, np_dtype) -> np.ndarray | None:
  """The buffer's memory as a numpy array when the device is host memory (CPU devices), else None."""
  h = buf.handle
  return h[:buf.nbytes].view(np_dtype) if isinstance(h, np.ndarray) else None


def _local(kind, devices, ins, outs, numel, dtype, sizes=None):
  """The ring part inside the host; one device: a copy."""
  if len(devices) > 1: return RingCollective(kind, devices, numel, dtype, "sum", sizes).run(ins, outs)
  src, dst = ins[0], outs[0]
  src.runtime.copy_peer(dst.runtime, dst.handle, src.handle, min(src.nbytes, dst.nbytes))


class _Exchange:
  """One collective across hosts: its shape, the MPI call each local chunk needs, and what is in flight."""
  def __init__(self, kind: str, devices: list[str], numel: int, dtype, hosts, op: str):
    self.kind, self.devices, self.numel, self.dtype, self.hosts = kind, list(devices), numel, dtype, hosts
    n, H = len(devices), hosts.size
    self.scale = 1.0 / (n * H) if op == "mean" else None
    self.chunks = bounds(numel, n)                                      # the ring's chunks inside the host
    self.pieces = [bounds(hi - lo, H) for lo, hi in self.chunks]        # chunk d cut over the hosts
    self.pending = None                                                 # the transport's work in flight
    self.direct = kind == "all_reduce" and n == 1                       # one device: no ring, MPI reads the input itself

  def begin_specs(self):
    """What the begin item leaves on each device: its ring chunk (for all_gather: this host's piece in its place)."""
    return [(d, self.dtype, (hi - lo,)) for d, (lo, hi) in zip(self.devices, self.chunks)]

  def end_specs(self):
    if self.kind == "reduce_scatter": return [(d, self.dtype, (p[self.hosts.rank][1] - p[self.hosts.rank][0],)) for d, p in zip(self.devices, self.pieces)]
    return [(d, self.dtype, (self.numel,)) for d in self.devices]


class StagedMPI:
  """The transport between hosts: how the chunks of an exchange cross them. This one (the only one so far) stages
  each device's chunk in host memory (CPU devices are host memory already) and runs the MPI collective on the hosts'
  data thread. A GPU-direct transport (NCCL or RCCL on the device buffers themselves, bootstrapped over the same MPI)
  would implement the same two calls: `start` the cross-host part of an exchange on the begin item's chunk buffers,
  `finish` it, leaving each device's result in the buffers given."""

  def start(self, ex: _Exchange, chunks: list, sources: list | None = None):
    """sources (ex.direct): the inputs the chunks' results are computed from, instead of the chunks' own contents."""
    host = lambda b: _host_view(b, ex.dtype.np)
    if sources is not None and all(host(b) is not None for b in sources + chunks):   # host memory: MPI reads one, writes the other
      ex.pending = ex.hosts.submit(self._collectives(ex, [host(b) for b in chunks], [host(b) for b in sources]))
      return
    staged = [np.frombuffer(bytearray(b.runtime.copyout(b.handle, b.nbytes)), ex.dtype.np) if host(b) is None else host(b)
              for b in (sources or chunks)]
    if sources is not None and any(host(b) is not None for b in chunks):   # a host source, a device result: stage a copy
      staged = [a.copy() for a in staged]
    ex.pending = ex.hosts.submit(self._collectives(ex, staged))

  def finish(self, ex: _Exchange, results: list):
    """results: per device, the buffer for its chunk (all_reduce, all_gather) or its piece (reduce_scatter)."""
    arrays, ex.pending = ex.hosts.wait(ex.pending), None
    for b, arr in zip(results, arrays): _put(b, arr)

  @staticmethod
  def _collectives(ex: _Exchange, staged: list[np.ndarray], sends: list | None = None):
    """The MPI calls of every local chunk, in device order, for the data thread: what each chunk becomes (sends: an
    all-reduce's inputs, when they are not the chunks themselves)."""
    H, MPI, dt = ex.hosts.size, ex.hosts.MPI, ex.dtype
    def run(comm):
      out = []
      for d, arr in enumerate(staged):
        counts = [b - a for a, b in ex.pieces[d]]
        if ex.kind == "all_reduce":   # piece by piece: each piece's bytes are still in cache when MPI adds them
          for lo in range(0, arr.size, MPI_PIECE // dt.itemsize):
            hi = min(arr.size, lo + MPI_PIECE // dt.itemsize)
            comm.Allreduce(sends[d][lo:hi] if sends else MPI.IN_PLACE, arr[lo:hi], op=_mpi_sum(ex.hosts, dt))
          _scale(arr, dt, ex.scale); out.append(arr)
        elif ex.kind == "reduce_scatter":
          mine = np.empty(counts[ex.hosts.rank], dt.np)
          comm.Reduce_scatter(arr, mine, recvcounts=counts, op=_mpi_sum(ex.hosts, dt)); _scale(mine, dt, ex.scale); out.append(mine)
        else:
          comm.Allgatherv(MPI.IN_PLACE, [arr, counts, [a for a, _ in ex.pieces[d]], _mpi_type(ex.hosts, dt)]); out.append(arr)
      return out
    return run


TRANSPORT = StagedMPI()


class _Begin:
  """The first item of an exchange (module docstring)."""
  def __init__(self, ex: _Exchange): self.ex, self.outputs = ex, []
  def __repr__(self): return f"begin {self.ex.kind} across {self.ex.hosts.size} hosts ({self.ex.numel} x {self.ex.dtype.name})"
  def out_specs(self): return self.ex.begin_specs()

  def run(self, ins, outs):
    ex = self.ex
    if ex.direct: return TRANSPORT.start(ex, outs, ins)
    if ex.kind == "all_gather":   # this host's piece into its place in the chunk
      for d, (i, o) in enumerate(zip(ins, outs)):
        lo = ex.pieces[d][ex.hosts.rank][0] * ex.dtype.itemsize
        i.runtime.copy_peer(o.runtime, o.runtime.view(o.handle, lo, i.nbytes), i.handle, i.nbytes)
    else: _local("reduce_scatter", ex.devices, ins, outs, ex.numel, ex.dtype)
    TRANSPORT.start(ex, outs)


class _End:
  """The second item: wait for the transport, finish inside the host. With one device per host the result is left in
  the begin item's buffer (in_place: realize makes it this item's output), so nothing is copied."""
  def __init__(self, ex: _Exchange): self.ex, self.outputs, self.in_place = ex, [], ex.direct
  def __repr__(self): return f"end {self.ex.kind} across {self.ex.hosts.size} hosts ({self.ex.numel} x {self.ex.dtype.name})"
  def out_specs(self): return self.ex.end_specs()

  def run(self, ins, outs):
    ex = self.ex
    if ex.kind == "reduce_scatter" or ex.direct: return TRANSPORT.finish(ex, outs)
    TRANSPORT.finish(ex, ins)   # the chunk, into the begin item's buffer (which nothing else reads)
    if ex.kind == "all_reduce": _local("all_gather", ex.devices, ins, outs, ex.numel, ex.dtype)
    else: _local("all_gather", ex.devices, ins, outs, ex.numel, ex.dtype, [hi - lo for lo, hi in ex.chunks])


def _put(buf, arr: np.ndarray):
  """arr into the buffer (a no-op when arr is the CPU buffer's own memory)."""
  v = _host_view(buf, arr.dtype)
  if v is not None:
    if v.ctypes.data != arr.ctypes.data: v[:arr.size] = arr
    return
  buf.runtime.copyin(buf.handle, arr)


class Pending:
  """An exchange whose begin item has been built (and, after `exchange`, run): `end()` gives its outputs."""
  def __init__(self, ex: _Exchange, xs: list[Tensor], shape):
    self.ex, self.shape = ex, shape
    precision.note("comm", ex.dtype)
    self.begun = [Tensor(o) for o in LazyBuffer.collective(_Begin(ex), [x.lazydata.reshape((x.numel(),)) for x in xs], ex.begin_specs())]

  def end(self) -> list[Tensor]:
    outs = LazyBuffer.collective(_End(self.ex), [b.lazydata for b in self.begun], self.ex.end_specs())
    return [Tensor(o).reshape(self.shape) if self.shape is not None else Tensor(o) for o in outs]


def exchange(pending: list[Pending]) -> list[list[Tensor]]:
  """Run every begin item, then build the end items: the outputs of each exchange, in order."""
  Tensor.realize_all(*[t for p in pending for t in p.begun])
  return [p.end() for p in pending]


def _check(xs: list[Tensor]):
  if len({x.device for x in xs}) != len(xs): raise ValueError(f"a collective needs one tensor per device, got {[x.device for x in xs]}")


def all_reduce(xs: list[Tensor], hosts, op: str = "sum") -> Pending:
  """Begin the sum (or mean) over every replica of every host of xs (one tensor per local device, equal shapes)."""
  _check(xs)
  return Pending(_Exchange("all_reduce", [x.device for x in xs], xs[0].numel(), xs[0].dtype, hosts, op), xs, xs[0].shape)


def reduce_scatter(xs: list[Tensor], hosts, op: str = "sum") -> Pending:
  """Begin the ZeRO-1 reduce-scatter: device d of this host ends with its zero1_bounds piece of the flat sum (or mean)."""
  _check(xs)
  return Pending(_Exchange("reduce_scatter", [x.device for x in xs], xs[0].numel(), xs[0].dtype, hosts, op), xs, None)


def all_gather(pieces: list[Tensor], hosts, numel: int, shape=None) -> Pending:
  """Begin the all-gather of ZeRO-1 pieces (this host's, one per local device) into the n elements on every device."""
  _check(pieces)
  return Pending(_Exchange("all_gather", [p.device for p in pieces], numel, pieces[0].dtype, hosts, "sum"), pieces, shape)
