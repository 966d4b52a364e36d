"""Module: the base of layers and models. Parameters and buffers are found by walking attributes
(Tensors, tensor-parallel Sharded tensors, Modules, and lists/tuples/dicts of them) in definition order, so names come out as in
PyTorch (`layers.0.self_attn.q_proj.weight`). Attributes whose name starts with `_` are private and
skipped. A Tensor attribute is a parameter unless its name was registered with `register_buffer`.

`recompute_blocks(model)` marks every block of a model (each module held in a list: the transformer
layers, the residual blocks) so that calling it runs core.recompute: its activations are recomputed in
backward instead of kept. The model's code is unchanged.
"""
from __future__ import annotations
import functools
from contextlib import contextmanager
import numpy as np
from ..core import Tensor, dtypes
from ..core.ops import Op
from ..core.recompute import recompute
from ..core.dtypes import bf16_to_f32, f32_to_bf16
from ..checkpoint import save_tensors, load_tensors, CheckpointError, TensorData


_deferred = [False]


@contextmanager
def deferred_init():
  """Build modules without computing their parameters: each stays the lazy graph of its initialisation
  (random draws are lazy, see core/random.py) until `materialize` or `Module.realize()` runs it. A
  tensor-parallel build cuts each device's shard out of that graph, so a device computes only its own part."""
  prev, _deferred[0] = _deferred[0], True
  try: yield
  finally: _deferred[0] = prev


def materialize(t: Tensor, requires_grad: bool | None = None) -> Tensor:
  """A realized Tensor that owns its buffer (so `assign` updates it in place and a JIT replays it); under
  deferred_init, the tensor as it is (lazy)."""
  rg = t.requires_grad if requires_grad is None else requires_grad
  lb = t.lazydata
  if _deferred[0] or (lb.op is Op.BUFFER and lb.buffer is not None): out = t
  else:
    out = Tensor(lb.contiguous())
    out.realize()
    if out.lazydata.op is not Op.BUFFER: out = Tensor(out.numpy(), device=t.device, dtype=t.dtype)
  out.requires_grad = rg
  return out


def to_numpy_storage(t: Tensor) -> TensorData:
  """A Tensor as checkpoint TensorData (bf16 as np.uint16 words, bit-exact)."""
  if t.dtype is dtypes.bfloat16: return TensorData(f32_to_bf16(t.numpy()), "bfloat16")
  return TensorData(np.ascontiguousarray(t.numpy()).reshape(t.shape), np.dtype(t.dtype.np).name)


def _np_of(v):
  """A state-dict value (Tensor, TensorData, (array, dtype) pair or array) -> (float-or-int array, dtype name)."""
  if isinstance(v, Tensor): return v.numpy(), v.dtype.name
  if isinstance(v, tuple):
    arr, dt = v
    return (bf16_to_f32(arr) if dt == "bfloat16" else np.asarray(arr)), dt
  arr = np.asarray(v)
  return arr, arr.dtype.name


class Module:
  training: bool = True

  def register_buffer(self, name: str, value: Tensor):
    self.__dict__.setdefault("_buffer_names", set()).add(name)
    setattr(self, name, value)

  # ---- discovery ----
  def _walk(self, prefix=""):
    """Yield (name, tensor, is_buffer) for every Tensor reachable from this module."""
    bufs = self.__dict__.get("_buffer_names", set())
    for k, v in self.__dict__.items():
      if k.startswith("_"): continue
      yield from _walk_value(f"{prefix}{k}", v, k in bufs)

  def named_parameters(self) -> list[tuple[str, Tensor]]: return [(n, t) for n, t, b in self._walk() if not b]
  def named_buffers(self) -> list[tuple[str, Tensor]]: return [(n, t) for n, t, b in self._walk() if b]
  def parameters(self) -> list[Tensor]: return [t for _, t in self.named_parameters()]
  def buffers(self) -> list[Tensor]: return [t for _, t in self.named_buffers()]
  def named_modules(self, prefix=""):
    yield prefix.rstrip("."), self
    for k, v in self.__dict__.items():
      if k.startswith("_"): continue
      yield from _walk_modules(f"{prefix}{k}", v)
  def modules(self): return [m for _, m in self.named_modules()]

  def state_dict(self) -> dict[str, Tensor]:
    """{name: Tensor} of parameters and buffers, in definition order."""
    return {n: t for n, t, _ in self._walk()}

  def _set(self, name: str, value: Tensor):
    """Replace the tensor at dotted path `name` (used when a tensor must be rebuilt, not assigned)."""
    obj, parts = self, name.split(".")
    for p in parts[:-1]: obj = obj[int(p)] if isinstance(obj, (list, tuple)) else (obj[p] if isinstance(obj, dict) else getattr(obj, p))
    last = parts[-1]
    if isinstance(obj, list): obj[int(last)] = value
    elif isinstance(obj, dict): obj[last] = value
    else: setattr(obj, last, value)

  def load_state_dict(self, state: dict, strict: bool = True):
    """Copy tensors into this module's parameters and buffers (in place, with `assign`), casting to
    each parameter's dtype. With strict, any missing, unexpected or wrongly shaped tensor is an error
    (a CheckpointError naming every offending tensor); without strict, only shapes are checked."""
    own = self.state_dict()
    problems = []
    if strict:
      problems += [f"missing tensor {n!r}" for n in own if n not in state]
      problems += [f"unexpected tensor {n!r}" for n in state if n not in own]
    for n, t in own.items():
      if n in state:
        shape = tuple(state[n].shape)
        if shape != tuple(t.shape): problems.append(f"{n!r} has shape {shape}, expected {tuple(t.shape)}")
    if problems: raise CheckpointError(f"load_state_dict ({type(self).__name__}): " + "; ".join(problems))
    for n, t in own.items():
      if n not in state: continue
      arr, _ = _np_of(state[n])
      arr = np.ascontiguousarray(arr.astype(np.float32) if t.dtype.is_float else arr).reshape(t.shape)
      if getattr(t, "is_sharded", False):
        t.assign_full(arr); continue
      new = Tensor(arr, device=t.device, dtype=t.dtype)
      if t.lazydata.op is Op.BUFFER and t.lazydata.buffer is not None:
        t.assign(new).realize()
      else:
        new.requires_grad = t.requires_grad
        self._set(n, new)
    return self

  # ---- files ----
  def save(self, path, metadata: dict | None = None):
    """Write the state dict to a safetensors file (bf16 stays bf16, bit-exact)."""
    save_tensors(path, {n: to_numpy_storage(t) for n, t in self.state_dict().items()}, metadata)

  def load(self, path, strict: bool = True):
    return self.load_state_dict(load_tensors(path), strict=strict)

  # ---- modes and placement ----
  def train(self, mode: bool = True):
    for m in self.modules(): m.training = mode
    return self
  def eval(self): return self.train(False)

  def realize(self):
    """Give every parameter and buffer its own realized buffer (needed before a jitted step)."""
    for n, t, b in list(self._walk()):
      if t.lazydata.op is not Op.BUFFER or t.lazydata.buffer is None:
        self._set(n, materialize(t, requires_grad=not b and t.requires_grad))
    return self

  def num_params(self) -> int: return sum(t.numel() for t in self.parameters())

  def zero_grad(self):
    for t in self.parameters(): t.grad = None

  def __call__(self, *args, **kwargs):
    if not self.__dict__.get("_recompute"): return self.forward(*args, **kwargs)
    fn = functools.partial(self.forward, **kwargs) if kwargs else self.forward
    return recompute(fn, *args, needs_grad=any(p.requires_grad for p in self.parameters()))
  def forward(self, *args, **kwargs): raise NotImplementedError


def recompute_blocks(model: Module, enabled: bool = True) -> Module:
  """Mark (or unmark) every block of `model`, each module held in a list, for activation recompute."""
  for _, m in model.named_modules():
    for v in m.__dict__.values():
      if isinstance(v, (list, tuple)):
        for block in v:
          if isinstance(block, Module): block._recompute = enabled
  return model


def _walk_value(name, v, is_buffer):
  if isinstance(v, Tensor) or getattr(v, "is_sharded", False): yield name, v, is_buffer
  elif isinstance(v, Module): yield from v._walk(name + ".")
  elif isinstance(v, (list, tuple)):
    for i, x in enumerate(v): yield from _walk_value(f"{name}.{i}", x, is_buffer)
  elif isinstance(v, dict):
    for k, x in v.items(): yield from _walk_value(f"{name}.{k}", x, is_buffer)


def _walk_modules(name, v):
  if isinstance(v, Module): yield from v.named_modules(name + ".")
  elif isinstance(v, (list, tuple)):
    for i, x in enumerate(v): yield from _walk_modules(f"{name}.{i}", x)
  elif isinstance(v, dict):
    for k, x in v.items(): yield from _walk_modules(f"{name}.{k}", x)
