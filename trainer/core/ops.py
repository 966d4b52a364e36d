"""The primitive ops: the whole instruction set of the lazy graph.

Everything in the Tensor API (matmul, conv, softmax, attention, cross entropy, random numbers) is a
composition of these. Each op's gradient rule lives with its autograd Function in `function.py`.

Elementwise (all sources have the same shape; floats compute in float32 inside a kernel):
  NEG x        -x
  RECIP x      1/x
  SQRT x       square root
  EXP2 x       2**x
  LOG2 x       log base 2
  SIN x        sine (radians)
  CAST x       convert to the node's dtype (float->int truncates toward zero)
  ADD a b      a + b (integers wrap)
  MUL a b      a * b
  IDIV a b     integer division truncating toward zero
  MOD a b      integer remainder with the sign of a (C semantics)
  MAX a b      the larger; a NaN on either side is the result (torch.maximum)
  CMPLT a b    a < b  -> bool
  CMPEQ a b    a == b -> bool
  AND/OR/XOR   bitwise (logical on bool)
  SHL/SHR a b  shift left / logical shift right (unsigned ints)
  WHERE c a b  a where c else b
Reductions (keep the reduced axes with size 1; arg = (op, axes)):
  SUM, MAX (NaN if any value is NaN)
Movement (views: no data moves until a kernel reads them; see view.py):
  RESHAPE PERMUTE EXPAND PAD SHRINK FLIP
Sources and sinks:
  BUFFER      data that lives in device memory (a realized node)
  CONST       a scalar broadcast to a shape
  COPY        the source's data on another device
  CONTIGUOUS  a materialised, contiguous copy of a view
  ASSIGN      write the value of src[1] into the buffer of src[0] (in-place update)
  CUSTOM      one output of a hand-written kernel over contiguous sources (arg: a custom.CustomCall, the
              kernel and every output, all made together), for what the ops above cannot do fast:
              fused attention, gathers by index (see custom.py)
  COLLECTIVE  one output of a collective over several devices (arg: its plan, e.g. parallel/ring.py's,
              which names every output); srcs are the contiguous inputs, one per device, and all
              outputs are made together
"""
from enum import Enum, auto


class Op(Enum):
  # unary
  NEG = auto(); RECIP = auto(); SQRT = auto(); EXP2 = auto(); LOG2 = auto(); SIN = auto(); CAST = auto()
  # binary
  ADD = auto(); MUL = auto(); IDIV = auto(); MOD = auto(); MAX = auto(); CMPLT = auto(); CMPEQ = auto()
  AND = auto(); OR = auto(); XOR = auto(); SHL = auto(); SHR = auto()
  # ternary
  WHERE = auto()
  # reduce
  SUM = auto(); RMAX = auto()
  # movement
  RESHAPE = auto(); PERMUTE = auto(); EXPAND = auto(); PAD = auto(); SHRINK = auto(); FLIP = auto()
  # sources / sinks
  BUFFER = auto(); CONST = auto(); COPY = auto(); CONTIGUOUS = auto(); ASSIGN = auto(); CUSTOM = auto(); COLLECTIVE = auto(); REDUCE = auto(); VIEW = auto()


UNARY = {Op.NEG, Op.RECIP, Op.SQRT, Op.EXP2, Op.LOG2, Op.SIN, Op.CAST}
BINARY = {Op.ADD, Op.MUL, Op.IDIV, Op.MOD, Op.MAX, Op.CMPLT, Op.CMPEQ, Op.AND, Op.OR, Op.XOR, Op.SHL, Op.SHR}
TERNARY = {Op.WHERE}
ALU = UNARY | BINARY | TERNARY
REDUCE_OPS = {Op.SUM, Op.RMAX}
MOVEMENT = {Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.PAD, Op.SHRINK, Op.FLIP}
COMPARE = {Op.CMPLT, Op.CMPEQ}
