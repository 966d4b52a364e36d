"""trainer.core: the framework. Tensor (frontend + autograd) -> lazy graph of primitive ops (ops.py)
-> scheduler (schedule.py) -> codegen (codegen/) -> runtimes (runtime/)."""
from .dtypes import dtypes, DType
from .tensor import Tensor, TensorError, no_grad, train, where
from . import functional  # attaches conv2d, cross_entropy, attention, ... to Tensor
from .jit import jit
from .device import canonical as device_name, device_count
