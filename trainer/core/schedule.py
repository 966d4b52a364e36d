"""The scheduler: cuts the lazy graph into kernels.

A kernel computes one output buffer from an expression tree (a UOp AST) whose leaves are loads of
realized buffers (each through a View in the kernel's loop space) and constants. The rules:
  * Elementwise ops fuse: a node read at the same index by its consumer is inlined; one that several
    kernels read is computed once (materialised) when it reads more than SHARED_LEAVES buffers, or when
    storing it lets a buffer it reads die (one at least as large, of FREED_BYTES or more, that nothing else
    reads: the matrix product a residual sum adds); a widening float cast is not stored: its narrower source
    is, and each reader redoes the exact cast. These decisions are made sources first. An
    inlined node keeps every buffer it reads alive until its last reader runs, so without the bound a
    chain such as the residual stream (or its gradient) summed over many layers would keep every layer's
    terms alive to the end and be recomputed, from all of them, by every reader.
  * A node read through another view (permute, pad, shrink, flip, expand) is still inlined when the
    view can be pushed down to its leaves (View.compose), and is selected to 0 outside a pad's mask; otherwise, and when an expanded node would
    be re-computed inside a reduction, it is materialised first.
  * Elementwise producers fuse into the reduce that consumes them. A reduce fuses into the
    elementwise ops after it (an epilogue) when it has a single consumer on a single-use path.
    A sum of products of two broadcast operands (a contraction: matmul, conv) is never given an
    epilogue, so backends can run it as a hand-tuned matrix product.
  * COPY, CUSTOM and COLLECTIVE nodes are items of their own (a device copy, a hand-written kernel, a
    collective); a CUSTOM or COLLECTIVE item makes all outputs of its call at once (a collective's on several devices).
  * Reduces, CONTIGUOUS, ASSIGN and everything the caller asked for are kernel outputs.
"""
from __future__ import annotations
from dataclasses import dataclass
import sys
from .ops import Op, ALU
from .lazy import LazyBuffer
from .view import View
from .dtypes import dtypes

sys.setrecursionlimit(20000)
SHARED_LEAVES = 4   # buffers a shared elementwise node may read and still be inlined (the residual stream: a few adds)
FREED_BYTES = 1 << 16   # a shared node is stored to let a buffer it reads die only when that buffer is at least this large


class UOp:
  """A node of a kernel's expression tree. kind: 'load' (arg: (input index, View)), 'const' (arg:
  (value, View for its mask)), 'reduce' (arg: (Op.SUM|Op.RMAX, axes)), or an ALU Op."""
  __slots__ = ("kind", "dtype", "arg", "srcs")

  def __init__(self, kind, dtype, arg=None, srcs=()):
    self.kind, self.dtype, self.arg, self.srcs = kind, dtype, arg, tuple(srcs)

  def key(self) -> tuple:
    """Structural identity of the DAG (linear in its size): nodes in topological order, sources by position."""
    pos, out = {}, []
    for u in self.walk():
      pos[id(u)] = len(out)
      out.append((u.kind, u.dtype.name, u.arg, tuple(pos[id(s)] for s in u.srcs)))
    return tuple(out)

  def __repr__(self): return f"UOp({self.kind if isinstance(self.kind, str) else self.kind.name}, {self.dtype.name}, {self.arg}, {list(self.srcs)})"

  def walk(self, seen=None):
    """Topologically ordered nodes (sources first), each once."""
    seen = {} if seen is None else seen
    if id(self) in seen: return []
    out = []
    for s in self.srcs: out += s.walk(seen)
    seen[id(self)] = True
    return out + [self]


@dataclass
class Kernel:
  ast: UOp                  # the value stored at each output index
  shape: tuple              # loop space; the output has size 1 on the reduce axes
  inputs: list              # LazyBuffer bases (realized before the kernel runs), load index i -> inputs[i]
  output: LazyBuffer        # the base whose buffer receives the result

  @property
  def reduce(self) -> UOp | None: return next((u for u in self.ast.walk() if u.kind == "reduce"), None)
  @property
  def out_shape(self):
    r = self.reduce
    return tuple(1 if r and i in r.arg[1] else s for i, s in enumerate(self.shape))


@dataclass
class CopyItem:
  output: LazyBuffer
  source: LazyBuffer
  @property
  def inputs(self): return [self.source]


@dataclass
class CustomItem:
  """All outputs of one hand-written kernel (call: the nodes' arg, a custom.CustomCall) over contiguous realized
  inputs; an output nobody holds any more is None."""
  call: object
  outputs: list
  inputs: list


@dataclass
class CollectiveItem:
  """All outputs of one collective (plan: the nodes' arg); an output nobody holds any more is None."""
  plan: object
  outputs: list
  inputs: list


def _is_contraction(r: LazyBuffer) -> bool:
  return r.arg[0] is Op.SUM and r.srcs[0].broadcast_product


class _Builder:
  def __init__(self, targets):
    self.targets = {id(t) for t in targets}
    self.items, self.done, self.consumers, self.leaf_memo = [], {}, {}, {}
    self.pending = {}   # id -> node, for the nodes this schedule computes (not realized before it)
    stack = list(targets)
    while stack:
      n = stack.pop().base
      if id(n) in self.pending or n.realized: continue
      self.pending[id(n)] = n
      for s in n.srcs:
        self.consumers[id(s.base)] = self.consumers.get(id(s.base), 0) + 1
        stack.append(s)
    # which shared elementwise nodes are computed once: decided sources first, so that a node's leaves stop
    # at the sources already decided (a residual sum stored at its own add is one leaf of the norm after it)
    self.shared_stored = set()
    for n in sorted(self.pending.values(), key=lambda n: n.seq):   # a node is made after its sources
      if n.op in ALU and self.consumers.get(id(n), 0) > 1 and (len(self.leaves(n)) > SHARED_LEAVES or self._frees_a_buffer(n)):
        self.shared_stored.add(id(n))

  def leaves(self, node: LazyBuffer) -> frozenset:
    """The buffers an elementwise node reads when fused (up to realized, stored, target or non-elementwise nodes)."""
    got = self.leaf_memo.get(id(node))
    if got is None:
      got = frozenset()
      for s in node.srcs:
        b = s.base
        if b.op is Op.CONST: continue
        inlined = b.op in ALU and not b.realized and id(b) not in self.shared_stored and id(b) not in self.targets
        got |= self.leaves(b) if inlined else {id(b)}
      self.leaf_memo[id(node)] = got
    return got

  def _frees_a_buffer(self, node: LazyBuffer) -> bool:
    """Whether storing the elementwise node lets a buffer at least as large (and not small) die: one it reads
    that this schedule makes and nothing else reads (a residual stream's matmul term)."""
    nbytes = lambda n: n.size * n.dtype.itemsize
    need = max(nbytes(node), FREED_BYTES)
    return any(l in self.pending and l not in self.targets and self.consumers.get(l, 0) == 1 and nbytes(self.pending[l]) >= need
               for l in self.leaves(node))

  def schedule(self, node: LazyBuffer):
    """Make `node` (a base) a kernel output; schedule what it needs first."""
    if node.realized or id(node) in self.done: return
    self.done[id(node)] = node
    if node.op is Op.COPY:
      self.schedule(node.srcs[0].base)
      self.items.append(CopyItem(node, node.srcs[0].base)); return
    if node.op in (Op.CUSTOM, Op.COLLECTIVE):
      outs = [r() for r in node.arg.outputs]
      for o in outs:
        if o is not None: self.done[id(o)] = o
      for src in node.srcs: self.schedule(src.base)
      item = CustomItem if node.op is Op.CUSTOM else CollectiveItem
      self.items.append(item(node.arg, outs, [src.base for src in node.srcs])); return
    k = _KernelBuilder(self, node)
    self.items.append(k.build())


class _KernelBuilder:
  def __init__(self, sched: _Builder, root: LazyBuffer):
    self.s, self.root = sched, root
    self.inputs, self.index, self.memo = [], {}, {}
    self.reduce_shape = self.reduce_out = None

  def build(self) -> Kernel:
    root = self.root
    if root.op is Op.ASSIGN:
      target, value = root.srcs
      ast = self.node(value.base, value.view, True, False)
      # the value may read the target only at the same index (in-place elementwise update is safe)
      for u in ast.walk():
        if u.kind == "load" and self.inputs[u.arg[0]] is target.base and not u.arg[1].contiguous:
          self.s.schedule(value.base)
          ast = self.load(value.base, value.view); break
    elif root.op is Op.CONTIGUOUS:
      ast = self.node(root.srcs[0].base, root.srcs[0].view, True, False)
    else:
      ast = self.fuse(root, View.create(root.shape), True, False)
    shape = self.reduce_shape or root.shape
    if self.reduce_shape is not None: ast = _widen_epilogue(ast, self.reduce_out, shape)
    return Kernel(ast, shape, self.inputs, root)

  def load(self, base: LazyBuffer, view: View) -> UOp:
    if view.mask is not None and any(lo >= hi for lo, hi in view.mask): return UOp("const", base.dtype, (0, View.create(view.shape)))
    if id(base) not in self.index:
      self.index[id(base)] = len(self.inputs); self.inputs.append(base)
    return UOp("load", base.dtype, (self.index[id(base)], view))

  def node(self, base: LazyBuffer, view: View, single: bool, in_reduce: bool) -> UOp:
    key = (id(base), view, in_reduce)
    if key not in self.memo: self.memo[key] = self._node(base, view, single, in_reduce)
    return self.memo[key]

  def _node(self, base, view, single, in_reduce) -> UOp:
    if base.op is Op.CONST: return UOp("const", base.dtype, (base.arg, view))
    if base.realized or id(base) in self.s.done or id(base) in self.s.targets and base is not self.root:
      return self.materialised(base, view)
    identity = view.contiguous and view.shape == base.shape
    if base.op in ALU:
      if not identity and in_reduce and any(st == 0 and s > 1 for s, st in zip(view.shape, view.strides)):
        return self.stored(base, view)
      if id(base) in self.s.shared_stored: return self.stored(base, view)
      return self.fuse(base, view, single, in_reduce) or self.materialised(base, view)
    unit_reshape = view.contiguous and [d for d in view.shape if d != 1] == [d for d in base.shape if d != 1]
    if base.op is Op.REDUCE and unit_reshape and single and not in_reduce and self.reduce_shape is None \
       and self.s.consumers.get(id(base), 0) <= 1 and not _is_contraction(base):
      return self.fuse(base, view, single, in_reduce)
    return self.materialised(base, view)

  def materialised(self, base, view) -> UOp:
    self.s.schedule(base)
    return self.load(base, view)

  def stored(self, base, view) -> UOp:
    """An elementwise node that must be computed once: stored, except that a widening float cast (bfloat16 to
    float32: exact, and free to redo) stores its narrower source and is redone by each reader."""
    src = base.srcs[0] if base.op is Op.CAST else None
    if src is not None and src.dtype.is_float and base.dtype.is_float and base.dtype.itemsize > src.dtype.itemsize:
      v = src.view if view.contiguous and view.shape == base.shape else view.compose(src.view)
      if v is not None: return UOp(Op.CAST, base.dtype, base.arg, [self.stored(src.base, v) if src.base.op in ALU else self.materialised(src.base, v)])
    return self.materialised(base, view)

  def fuse(self, base: LazyBuffer, view: View, single: bool, in_reduce: bool) -> UOp | None:
    identity = view.contiguous and view.shape == base.shape
    if base.op is Op.REDUCE:
      src = base.srcs[0]
      self.reduce_shape, self.reduce_out = src.shape, base.shape
      inner = self.node(src.base, src.view, True, True)
      return UOp("reduce", base.dtype, base.arg, (inner,))
    views = []
    for s in base.srcs:
      v = s.view if identity else view.compose(s.view)
      if v is None: return None
      views.append(v)
    single = single and identity and self.s.consumers.get(id(base), 0) <= 1
    srcs = [self.node(s.base, v, single, in_reduce) for s, v in zip(base.srcs, views)]
    out = UOp(base.op, base.dtype, base.arg, srcs)
    if not identity and view.mask is not None:
      # outside a pad the leaves read 0, but the op need not map 0 to 0 (1/x, exp): select 0 there
      valid = UOp("const", dtypes.bool, (True, View.create(view.shape, mask=view.mask)))
      out = UOp(Op.WHERE, base.dtype, None, (valid, out, UOp("const", base.dtype, (0, View.create(view.shape)))))
    return out


def _widen_epilogue(ast: UOp, out: tuple, full: tuple) -> UOp:
  """Views above the reduce are in the consumer's space (the reduce's output `out`, perhaps without its
  size-1 axes): bring them to `out`, then stretch them over the reduce axes of the loop space."""
  if ast.kind == "reduce": return ast
  if ast.kind in ("load", "const"):
    i, v = ast.arg
    return UOp(ast.kind, ast.dtype, (i, (v.reshape(out) if v.shape != out else v).expand(full)))
  return UOp(ast.kind, ast.dtype, ast.arg, [_widen_epilogue(s, out, full) for s in ast.srcs])


def create_schedule(targets: list[LazyBuffer]) -> list:
  """Kernels (and device copies) that realize every target base, in an order that respects data
  dependencies and lets in-place ASSIGNs run after every reader of the old value."""
  bases = [t.base for t in targets if not t.realized]
  b = _Builder(bases)
  for t in bases: b.schedule(t)
  return _delay_copies(_order_assigns(sorted(b.items, key=_created)))


def _created(item) -> int:
  """When the program made the item's output: a kernel's inputs are always made before its output, so this
  order respects every data dependency, and it is eager execution's order. Between the autograd walk and
  the order of the targets, depth-first order could keep every layer's output gradient alive until its
  weight gradient ran; this order runs each weight's gradient right after the layer's backward."""
  outs = item.outputs if isinstance(item, (CustomItem, CollectiveItem)) else [item.output]
  return min(o.seq for o in outs if o is not None)


def _writes(item) -> list:
  """The realized buffers (ids of their bases) the item overwrites in place: an ASSIGN kernel's target, a
  custom kernel's `into` buffers."""
  if isinstance(item, Kernel): return [id(item.output.srcs[0].base)] if item.output.op is Op.ASSIGN else []
  if isinstance(item, CustomItem): return [id(t) for t in item.call.into if t is not None]
  return []


def _delay_copies(items: list) -> list:
  """Move each device copy down to just before its first reader (or a write to its source). A copy
  orders the two devices' streams, so a copy issued early would make one device wait for work the other
  queued meanwhile (e.g. one data-parallel replica waiting for the other's whole step)."""
  out, pending = [], []
  for it in items:
    if pending:
      reads = {id(i) for i in it.inputs}
      writes = _writes(it)
      due = [c for c in pending if id(c.output) in reads or id(c.source) in writes]
      for c in due: pending.remove(c)
      out += due
    if isinstance(it, CopyItem): pending.append(it)
    else: out.append(it)
  return out + pending


def _order_assigns(items: list) -> list:
  writes, producer = {}, {}
  for i, it in enumerate(items):
    for o in (it.outputs if isinstance(it, (CustomItem, CollectiveItem)) else [it.output]):
      if o is not None: producer[id(o)] = i
    for w in _writes(it): writes[w] = i
  if not writes: return items
  deps = {i: set() for i in range(len(items))}
  for i, it in enumerate(items):
    for inp in it.inputs:
      if id(inp) in producer: deps[i].add(producer[id(inp)])
      w = writes.get(id(inp))
      if w is not None and w != i: deps[w].add(i)   # read the old value before it is overwritten
  # depth-first placement, as a loop: a recursive closure would be a reference cycle keeping every item
  # (and so every buffer of the schedule) alive until the garbage collector ran
  out, placed, active = [], set(), set()
  for root in range(len(items)):
    stack = [(root, False)]
    while stack:
      i, done = stack.pop()
      if done:
        active.discard(i); placed.add(i); out.append(items[i]); continue
      if i in placed: continue
      if i in active: raise RuntimeError("a kernel reads one buffer both before and after an in-place assign to it; realize the assign first")
      active.add(i)
      stack.append((i, True))
      stack.extend((j, False) for j in sorted(deps[i], reverse=True))
  return out
