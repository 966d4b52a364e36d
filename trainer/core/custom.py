"""Hand-written kernels as graph nodes (Op.CUSTOM).

Some work the primitive ops cannot express at speed: fused attention (the scores never reach device
memory), or reading rows by index (an embedding of 128K rows as a one-hot product costs a matmul).
A CustomKernel is one such kernel: `outputs = f(*inputs)` over contiguous arrays of known shapes. It
gives a numpy `reference` (the meaning, used on every device that has no rendering of its own, and in
tests) and, per backend, a rendering (`render_c` for the CPU runtime, `render_cuda`). Each use of it in
the graph is a CustomCall, the arg of all its output nodes; the scheduler makes one item of it that
writes every output, and the JIT records and replays it like any kernel. Gradients are ordinary autograd
Functions whose forward and backward build CUSTOM nodes (see the kernels/ package).
"""
from __future__ import annotations
import numpy as np
from .dtypes import from_storage, to_storage


class CustomKernel:
  """Subclasses set `name`, implement key() and reference() (one array, or a tuple of arrays for several
  outputs), and may implement render_c(fname) -> C source and render_cuda(fname, arch) -> codegen.cuda.Rendered
  (kernels taking (*outputs, *inputs) pointers)."""
  name = "custom"

  def key(self) -> tuple: raise NotImplementedError
  def reference(self, *arrays: np.ndarray) -> np.ndarray | tuple: raise NotImplementedError
  def __repr__(self): return f"{type(self).__name__}{self.key()}"
  def __eq__(self, other): return type(self) is type(other) and self.key() == other.key()
  def __hash__(self): return hash((type(self).__name__, self.key()))


class CustomCall:
  """One use of a kernel in the graph (the arg of each of its output nodes): the outputs' (shape, dtype) and,
  once LazyBuffer.custom made them, weak references to their nodes (None for one nobody holds any more);
  `into`: for each output, the realized LazyBuffer whose buffer it is written into, or None for a new one."""
  def __init__(self, kernel: CustomKernel, device: str, specs, into=None):
    self.kernel, self.device, self.specs = kernel, device, [(tuple(shape), dtype) for shape, dtype in specs]
    self.into = list(into) if into is not None else [None] * len(self.specs)
    self.outputs = []

  def __repr__(self): return repr(self.kernel)


class HostProgram:
  """Runs a CustomKernel's numpy reference on any runtime: copy the inputs out, compute, copy the results in."""
  def __init__(self, rt, kernel: CustomKernel, outs, inputs):
    self.rt, self.kernel, self.name = rt, kernel, kernel.name
    self.outs = list(outs)
    self.ins = [(b.shape, b.dtype, b.size * b.dtype.itemsize) for b in inputs]

  def __call__(self, *handles):
    n = len(self.outs)
    arrays = [from_storage(np.frombuffer(self.rt.copyout(h, nb), dtype=dt.np, count=int(np.prod(shape))).reshape(shape), dt)
              for h, (shape, dt, nb) in zip(handles[n:], self.ins)]
    res = self.kernel.reference(*arrays)
    res = [res] if n == 1 else list(res)
    assert len(res) == n, f"{self.kernel}: reference gave {len(res)} outputs, expected {n}"
    for h, r, (shape, dt) in zip(handles, res, self.outs):
      r = np.asarray(r)
      assert r.shape == shape, f"{self.kernel}: reference gave shape {r.shape}, expected {shape}"
      self.rt.copyin(h, to_storage(r, dt).reshape(-1))

  def bind(self, *handles): return lambda: self(*handles)
