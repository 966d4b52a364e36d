"""Run a schedule: allocate output buffers, compile each kernel once (cached by its structure), launch.
While a JIT capture is active every launch is also recorded for replay (see jit.py)."""
from __future__ import annotations
import math
from .device import Buffer, OutOfMemoryError, get_runtime
from .ops import Op
from .schedule import create_schedule, Kernel, CopyItem, CustomItem, CollectiveItem
from .lazy import LazyBuffer

_programs: dict = {}
capturing = None     # set by the JIT: its append() receives (program, outputs + inputs), ('copy', dst, src) or ('collective', plan, inputs + outputs)
stats = {"kernels": 0, "compiled": 0}


descriptions: dict = {}   # id(program) -> what it computes, for profiles


def describe(k: Kernel | CustomItem) -> str:
  if isinstance(k, CustomItem): return f"custom {k.call!r}"
  kind = "reduce" if k.reduce is not None else "elementwise"
  if kind == "reduce" and k.reduce.srcs[0].kind is Op.MUL and len(k.inputs) == 2: kind = "product"
  return f"{kind} {k.shape} {'+'.join(b.dtype.name for b in k.inputs)} -> {k.output.dtype.name}{' in place' if k.output.op is Op.ASSIGN else ''}"


def kernel_key(k: Kernel | CustomItem):
  if isinstance(k, CustomItem): return (get_runtime(k.call.device), k.call.kernel)
  return (get_runtime(k.output.device), k.ast.key(), k.shape, tuple(b.dtype for b in k.inputs), k.output.dtype)


def get_program(k: Kernel | CustomItem):
  key = kernel_key(k)
  p = _programs.get(key)
  if p is None:
    rt, name = key[0], f"k{len(_programs)}"
    p = _programs[key] = rt.compile_custom(k.call.kernel, name, k.call.specs, k.inputs) if isinstance(k, CustomItem) else rt.compile(k, name)
    descriptions[id(p)] = describe(k)
    stats["compiled"] += 1
  return p


def compile_ahead(items: list):
  """The programs of a schedule's kernels that are not compiled yet, compiled side by side where a runtime can
  (compile_many: the CPU runs one C compiler per core); the others are compiled at their launch."""
  todo: dict = {}
  for k in items:
    if isinstance(k, Kernel) and hasattr(get_runtime(k.output.device), "compile_many"):
      key = kernel_key(k)
      if key not in _programs and key not in todo: todo[key] = k
  for rt in {key[0] for key in todo}:
    keys = [key for key in todo if key[0] is rt]
    names = [f"k{len(_programs) + i}" for i in range(len(keys))]
    for key, p in zip(keys, rt.compile_many([todo[key] for key in keys], names)):
      _programs[key] = p
      descriptions[id(p)] = describe(todo[key])
      stats["compiled"] += 1


def realize(*lbs: LazyBuffer):
  items = create_schedule(list(lbs))[::-1]
  compile_ahead(items)
  while items: run_item(items.pop())   # an intermediate is freed after its last reader, not at the end


def run_item(item):
  try: _run_item(item)
  except OutOfMemoryError as e:
    if not e.what: e.what = describe(item) if isinstance(item, (Kernel, CustomItem)) else type(item).__name__
    raise


def _run_item(item):
  ins = [b.buffer for b in item.inputs]
  if isinstance(item, CollectiveItem):   # a plan with `in_place` set writes its results into its inputs' buffers
    outs = ins if getattr(item.plan, "in_place", False) else [Buffer(d, math.prod(shape), dt) for d, dt, shape in item.plan.out_specs()]
    item.plan.run(ins, outs)
    if capturing is not None: capturing.append(("collective", item.plan, ins + outs))
    return _become(item.outputs, outs)
  if isinstance(item, CustomItem):
    outs = [t.buffer if t is not None else Buffer(item.call.device, math.prod(shape), dt) for t, (shape, dt) in zip(item.call.into, item.call.specs)]
    _launch(item, outs + ins)
    return _become(item.outputs, outs)
  out = item.output
  if isinstance(item, CopyItem):
    buf = Buffer(out.device, out.size, out.dtype)
    buf.copy_from_peer(ins[0])
    if capturing is not None: capturing.append(("copy", buf, ins[0]))
  else:
    buf = out.srcs[0].base.buffer if out.op is Op.ASSIGN else Buffer(out.device, out.size, out.dtype)
    _launch(item, [buf] + ins)
  _become([out], [buf])


def _launch(item: Kernel | CustomItem, bufs: list):
  """Run the item's program on its buffers (outputs, then inputs)."""
  prog = get_program(item)
  prog(*[b.handle for b in bufs])
  stats["kernels"] += 1
  if capturing is not None: capturing.append((prog, bufs))


def _become(lbs: list, bufs: list):
  """The nodes (None: an output nobody holds) are now their realized buffers."""
  for lb, buf in zip(lbs, bufs):
    if lb is not None: lb.buffer, lb.op, lb.srcs, lb.arg = buf, Op.BUFFER, (), None
