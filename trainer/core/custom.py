"""Hand-written kernels as graph nodes (Op.CUSTOM).

Some work the primitive ops cannot express at speed: fused attention (the scores never reach device
memory), or reading rows by index (an embedding of 128K rows as a one-hot product costs a matmul).
A CustomKernel is one such kernel: `out = f(*inputs)` over contiguous arrays of known shapes. It
gives a numpy `reference` (the meaning, used on every device that has no rendering of its own, and in
tests) and, per backend, a rendering (`render_c` for the CPU runtime, `render_cuda`). The scheduler treats the node as one item; the
JIT records and replays it like any kernel. Gradients are ordinary autograd Functions whose forward and
backward build CUSTOM nodes (see the kernels/ package).
"""
from __future__ import annotations
import numpy as np
from .dtypes import from_storage, to_storage


class CustomKernel:
  """Subclasses set `name`, implement key() and reference(), and may implement render_c(fname) -> C source
  and render_cuda(fname, arch) -> codegen.cuda.Rendered (kernels taking (out, *inputs) pointers)."""
  name = "custom"

  def key(self) -> tuple: raise NotImplementedError
  def reference(self, *arrays: np.ndarray) -> np.ndarray: raise NotImplementedError
  def __repr__(self): return f"{type(self).__name__}{self.key()}"
  def __eq__(self, other): return type(self) is type(other) and self.key() == other.key()
  def __hash__(self): return hash((type(self).__name__, self.key()))


class HostProgram:
  """Runs a CustomKernel's numpy reference on any runtime: copy the inputs out, compute, copy the result in."""
  def __init__(self, rt, kernel: CustomKernel, out, inputs):
    self.rt, self.kernel, self.name = rt, kernel, kernel.name
    self.out = (out.shape, out.dtype)
    self.ins = [(b.shape, b.dtype, b.size * b.dtype.itemsize) for b in inputs]

  def __call__(self, out, *handles):
    arrays = [from_storage(np.frombuffer(self.rt.copyout(h, n), dtype=dt.np, count=int(np.prod(shape))).reshape(shape), dt)
              for h, (shape, dt, n) in zip(handles, self.ins)]
    res = np.asarray(self.kernel.reference(*arrays))
    assert res.shape == self.out[0], f"{self.kernel}: reference gave shape {res.shape}, expected {self.out[0]}"
    self.rt.copyin(out, to_storage(res, self.out[1]).reshape(-1))

  def bind(self, *handles): return lambda: self(*handles)
