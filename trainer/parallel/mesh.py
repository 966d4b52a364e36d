"""The device mesh: dp x tp devices of one backend on this host, as the recipe's `mesh` asks.
Device (d, t) is `BACKEND:(d * tp + t)`: the tensor-parallel group of a replica is contiguous."""
from __future__ import annotations
from dataclasses import dataclass
from ..core.device import device_count


@dataclass(frozen=True)
class Mesh:
  dp: int
  tp: int
  backend: str = "CPU"

  def __post_init__(self):
    if self.dp < 1 or self.tp < 1: raise ValueError(f"mesh dp={self.dp} tp={self.tp}: both must be >= 1")

  @property
  def size(self): return self.dp * self.tp
  def device(self, d: int, t: int = 0) -> str: return f"{self.backend}:{d * self.tp + t}"
  def tp_group(self, d: int) -> list[str]: return [self.device(d, t) for t in range(self.tp)]
  def dp_group(self, t: int) -> list[str]: return [self.device(d, t) for d in range(self.dp)]
  def devices(self) -> list[str]: return [self.device(d, t) for d in range(self.dp) for t in range(self.tp)]

  def validate(self) -> Mesh:
    """Clear error when the host has fewer devices than the mesh needs."""
    have = device_count(self.backend)
    if have < self.size:
      raise ValueError(f"mesh dp={self.dp} x tp={self.tp} needs {self.size} {self.backend} devices, this host has {have}")
    return self
