"""Render a kernel as C for the CPU runtime: a loop nest with OpenMP threads over the output axes and
SIMD inner loops; contractions (matmul, conv) go to a packed, register-blocked matrix product."""
from __future__ import annotations
import itertools
from math import prod
from ..ops import Op
from ..dtypes import dtypes
from ..schedule import Kernel
from .loops import lower, LoopNest, Access
from .cstyle import STORAGE, ctype, load_expr, store_expr, literal, alu_expr, max_expr, PRELUDE
from . import gemm

PARALLEL_MIN = 1 << 15     # elements of work below which a kernel stays on one thread
UNROLL = 4                 # output loops this short (inside the first) are unrolled, not looped over
UNROLLED = 16              # copies of a body at most: unrolled loops, or a reduction this small, unrolled, vectorised across outputs
UNROLLED_NODES = 2048      # expression nodes in all copies at most (a random init's hashing copied 9 times took the C compiler 1.8 s)
LANES = 64                 # an innermost reduce loop this short accumulates in one lane per iteration
COLUMNS = 64               # outputs a thread accumulates together in a reduction read along its output axis (4 AVX-512 vectors)
HEADER = "#include <math.h>\n#include <stdlib.h>\ntypedef _Float16 half;\n" + PRELUDE


def render(k: Kernel, name: str) -> str:
  nest = lower(k)
  g = gemm.match(k, nest)
  if g is not None: return HEADER + gemm.render(name, g, k)
  return HEADER + _Renderer(k, nest, name).render()


def index(acc: Access, names) -> str:
  terms = [str(acc.offset)] if acc.offset else []
  for n, st in zip(names, acc.strides):
    if st: terms.append(n if st == 1 else f"{n}*{st}")
  return "+".join(terms) or "0"


def valid(acc: Access, names) -> str | None:
  if acc.mask is None: return None
  conds = []
  for n, (lo, hi), s in zip(names, acc.mask, range(len(names))):
    if (lo, hi) == (0, 0): return "0"
    if lo > 0: conds.append(f"{n}>={lo}")
    conds.append(f"{n}<{hi}")
  return "&&".join(conds) or None


class _Renderer:
  def __init__(self, k: Kernel, nest: LoopNest, name: str):
    self.k, self.nest, self.name = k, nest, name
    self.vector_outputs = False   # a reduction whose innermost output loop runs in vectors (few values per output)
    self.unrolled = []            # loop axes written out as copies of the body
    self.names = [f"i{a}" for a in range(len(nest.shape))]

  def expr_lines(self, nodes, lines, vals):
    for u in nodes:
      if id(u) in vals: continue
      v = f"v{len(vals)}"
      if u.kind == "load":
        acc = self.nest.access[id(u)]
        e = load_expr(u.dtype, f"in{u.arg[0]}[{index(acc, self.names)}]")
        c = valid(acc, self.names)
        if c: e = f"(({c})?{e}:{literal(0, u.dtype)})"
      elif u.kind == "const":
        acc = self.nest.access[id(u)]
        e = literal(u.arg[0], u.dtype)
        c = valid(acc, self.names)
        if c: e = f"(({c})?{e}:{literal(0, u.dtype)})"
      else:
        e = alu_expr(u.kind, u.dtype, [s.dtype for s in u.srcs], [vals[id(s)] for s in u.srcs])
      lines.append(f"{ctype(u.dtype)} {v} = {e};")
      vals[id(u)] = v

  def render(self) -> str:
    k, nest = self.k, self.nest
    args = [f"{STORAGE[k.output.dtype]}* restrict out"] + [f"const {STORAGE[b.dtype]}* restrict in{i}" for i, b in enumerate(k.inputs)]
    shape, n_out, names = nest.shape, nest.n_out, self.names
    total = 1
    for s in shape: total *= s
    par = total >= PARALLEL_MIN
    red = k.reduce
    body, vals = [], {}
    if red is None:
      # loops of a few iterations inside the first are unrolled (up to UNROLLED copies of the body)
      for a in reversed(range(1, n_out)):
        copies = prod(shape[b] for b in self.unrolled) * shape[a]
        if shape[a] <= UNROLL and copies <= UNROLLED and copies * len(nest.nodes) <= UNROLLED_NODES: self.unrolled.append(a)
      out_idx = lambda: index(nest.out, self.names[:n_out] + ["0"] * (len(shape) - n_out))
      def element():
        lines, vals = [], {}
        self.expr_lines(nest.nodes, lines, vals)
        return lines + [f"out[{out_idx()}] = {store_expr(k.output.dtype, vals[id(k.ast)])};"]
      return f"void {self.name}({', '.join(args)}) {{\n" + self.loops(self.copies(self.unrolled, element), par) + "\n}\n"
    else:
      below = red.srcs[0].walk()
      inner, ivals = [], {}
      self.expr_lines(below, inner, ivals)
      r_op = red.arg[0]
      init = literal(0, red.dtype) if r_op is Op.SUM else (literal(float("-inf"), red.dtype) if red.dtype.is_float else _int_min(red.dtype))
      x = ivals[id(red.srcs[0])]
      upd = f"acc += {x};" if r_op is Op.SUM else f"acc = {max_expr(x, 'acc', red.dtype)};"
      # a simd reduction clause combines its lanes with a max that drops NaN: a float max under one takes the plain
      # compare and an or-reduced flag, and becomes NaN after the loop if it saw one (both clauses vectorise)
      flag = r_op is Op.RMAX and red.dtype.is_float
      simd_upd = f"acc = {x} > acc ? {x} : acc; nan_seen |= {x} != {x};" if flag else upd
      rkind = "+" if r_op is Op.SUM else "max"
      seen, settle = ("int nan_seen = 0;", "if (nan_seen) acc = NAN;") if flag else ("", "")
      body.append(f"{ctype(red.dtype)} acc = {init};")
      rloops = list(range(n_out, len(shape)))
      if self._columns(below, rloops):
        return f"void {self.name}({', '.join(args)}) {{\n" + self._render_columns(red, inner, ivals, init, par) + "\n}\n"
      loops = [f"for (long {names[a]} = 0; {names[a]} < {shape[a]}; {names[a]}++)" for a in rloops]
      chunks = n_out == 0 and par
      if chunks:   # a whole-tensor reduction: fixed chunks on the threads, partials combined in order (deterministic)
        nch, r0 = min(64, shape[rloops[0]]), names[rloops[0]]
        loops[0] = f"for (long {r0} = ch*{shape[rloops[0]]}/{nch}; {r0} < (ch+1)*{shape[rloops[0]]}/{nch}; {r0}++)"
      # the innermost loop (collapsed ones do not vectorize)
      loops.insert(len(loops) - 1, f"#pragma omp simd reduction({rkind}:acc)" + (" reduction(|:nan_seen)" if flag else ""))
      if chunks:
        body += [f"{ctype(red.dtype)} part[{nch}];", "#pragma omp parallel for", f"for (long ch = 0; ch < {nch}; ch++) {{",
                 f"{ctype(red.dtype)} acc = {init}; {seen}", *loops, "{ " + " ".join(inner) + " " + simd_upd + " }", f"{settle} part[ch] = acc; }}",
                 f"for (long ch = 0; ch < {nch}; ch++) {{ {ctype(red.dtype)} x = part[ch]; {upd.replace(x, 'x')} }}"]
      elif n_out and prod(shape[a] for a in rloops) <= UNROLLED and prod(shape[a] for a in rloops) * len(below) <= UNROLLED_NODES:
        # a few values per output (a pooling window): the reduce loops unrolled inside outputs taken in vectors
        self.vector_outputs = True
        def value():
          lines, vs = [], {}
          self.expr_lines(below, lines, vs)
          return lines + [upd.replace(ivals[id(red.srcs[0])], vs[id(red.srcs[0])])]
        body += self.copies(rloops, value)
      elif len(rloops) > 1 and shape[rloops[-1]] <= LANES:
        # a short innermost reduce loop: one accumulator per lane for the whole reduction, summed at the end (a
        # reduction clause would add its vector up across lanes at every pass of the loops outside it)
        lanes, ln = shape[rloops[-1]], names[rloops[-1]]
        body += [f"{ctype(red.dtype)} lane[{lanes}];", f"for (long v = 0; v < {lanes}; v++) lane[v] = {init};", *loops[:-2],
                 "{\n#pragma omp simd", loops[-1], "{ " + " ".join(inner) + " " + upd.replace("acc", f"lane[{ln}]") + " } }",
                 f"for (long v = 0; v < {lanes}; v++) {{ {ctype(red.dtype)} x = lane[v]; {upd.replace(x, 'x')} }}"]
      else:
        body += [seen, *loops, "{ " + " ".join(inner) + " " + simd_upd + " }", settle]
      vals[id(red)] = "acc"
      # epilogue nodes are evaluated with the reduce indices at 0
      epi = [u for u in nest.nodes if id(u) not in ivals or u is red]
      epi_lines = []
      saved = self.names
      self.names = names[:n_out] + ["0"] * len(rloops)
      self.expr_lines([u for u in epi if u is not red], epi_lines, vals)
      self.names = saved
      body += epi_lines
    out_idx = index(nest.out, names[:n_out] + ["0"] * (len(shape) - n_out))
    body.append(f"out[{out_idx}] = {store_expr(k.output.dtype, vals[id(k.ast)])};")
    return f"void {self.name}({', '.join(args)}) {{\n" + self.loops(body, par) + "\n}\n"

  def copies(self, axes, lines_of) -> list:
    """A block of lines_of() for each combination of the values of `axes` (short loops, unrolled): in each, those
    axes' indices are constants, so offsets and masks (a pad's, a stride's residues) fold away."""
    saved, out = self.names, []
    for combo in itertools.product(*(range(self.nest.shape[a]) for a in axes)):
      self.names = [str(combo[axes.index(a)]) if a in axes else n for a, n in enumerate(saved)]
      out.append("{ " + " ".join(lines_of()) + " }")
    self.names = saved
    return out

  def _columns(self, below, rloops) -> bool:
    """Whether the reduction reads its inputs along its last output axis (stride 1), and along its last reduce
    axis only what every output shares (a row's scale): a sum over rows of a block of columns (a norm's weight
    gradient), done COLUMNS at a time."""
    n_out = self.nest.n_out
    if n_out == 0: return False
    loads = [self.nest.access[id(u)].strides for u in below if u.kind == "load"]
    return any(abs(st[n_out - 1]) == 1 for st in loads) and all(st[n_out - 1] == 0 for st in loads if abs(st[rloops[-1]]) == 1)

  def _render_columns(self, red, inner, ivals, init, par) -> str:
    """Blocks of VB outputs along the last output axis on the threads; for every point of the reduce axes, the
    block's accumulators take a vector of values; then the epilogue and the store, output by output."""
    k, nest, names = self.k, self.nest, self.names
    shape, n_out = nest.shape, nest.n_out
    o, E = n_out - 1, shape[n_out - 1]
    vb = min(E, max(16, min(COLUMNS, -(-E // 2))))
    x = ivals[id(red.srcs[0])]
    upd = f"acc[v] += {x};" if red.arg[0] is Op.SUM else f"acc[v] = {max_expr(x, 'acc[v]', red.dtype)};"
    vals = {id(red): "acc[v]"}
    epi = []
    saved, self.names = self.names, names[:n_out] + ["0"] * (len(shape) - n_out)
    self.expr_lines([u for u in nest.nodes if id(u) not in ivals], epi, vals)
    self.names = saved
    out_idx = index(nest.out, names[:n_out] + ["0"] * (len(shape) - n_out))
    lane = f"for (long v = 0; v < vn; v++) {{ long {names[o]} = ob + v;"
    src = f"#pragma omp parallel for collapse({n_out})\n" if par else ""
    src += "".join(f"for (long {names[a]} = 0; {names[a]} < {shape[a]}; {names[a]}++)\n" for a in range(o))
    src += f"for (long ob = 0; ob < {E}; ob += {vb}) {{\nconst long vn = ob + {vb} < {E} ? {vb} : {E} - ob;\n"
    src += f"{ctype(red.dtype)} acc[{vb}];\nfor (long v = 0; v < {vb}; v++) acc[v] = {init};\n"
    src += "".join(f"for (long {names[a]} = 0; {names[a]} < {shape[a]}; {names[a]}++)\n" for a in range(n_out, len(shape)))
    src += f"{{\n#pragma omp simd\n{lane} {' '.join(inner)} {upd} }}\n}}\n"
    src += f"{lane} {' '.join(epi)} out[{out_idx}] = {store_expr(k.output.dtype, vals[id(k.ast)])}; }}\n}}"
    return src

  def loops(self, body, par) -> str:
    shape, n_out, names = self.nest.shape, self.nest.n_out, self.names
    inner = "\n".join(body)
    if n_out == 0: return "{\n" + inner + "\n}"
    red = self.k.reduce is not None
    if not red and n_out == 1:   # one long loop: chunks for the threads, SIMD inside each
      n = shape[0]
      return (f"{'#pragma omp parallel for' if par else ''}\nfor (long c = 0; c < {n}; c += 4096) {{\n"
              f"long e = c + 4096 < {n} ? c + 4096 : {n};\n#pragma omp simd\nfor (long i0 = c; i0 < e; i0++) {{\n{inner}\n}}\n}}")
    src, axes = "", [a for a in range(n_out) if a not in self.unrolled]
    vec = not red or self.vector_outputs   # the innermost output loop runs in vectors; the threads share the others
    outer = len(axes) - 1 if vec else len(axes)
    if par and outer > 0: src += f"#pragma omp parallel for collapse({outer})\n"
    for a in axes:
      if vec and a == axes[-1]: src += "#pragma omp simd\n"
      src += f"for (long {names[a]} = 0; {names[a]} < {shape[a]}; {names[a]}++)\n"
    return src + "{\n" + inner + "\n}"


def _int_min(dt):
  return {dtypes.int64: "(-9223372036854775807ll-1)", dtypes.int32: "(-2147483647-1)", dtypes.int8: "(-128)"}.get(dt, "0")
