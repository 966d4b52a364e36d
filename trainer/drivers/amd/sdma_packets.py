"""SDMA packets as bytes, per SDMA version: the encodings of the kernel's published packet headers
(vega10_sdma_pkt_open.h for SDMA 4.x, as on gfx942 (4.4.2) and gfx950 (4.4.5); sdma_v6_0_0_pkt_open.h
for SDMA 6.0, gfx1100). Definitions only: the driver's queue (sdma.py) writes them and the simulator
(sim/) decodes them; tests/drivers checks each field against the headers."""
from __future__ import annotations
import struct
from .kfd import AmdError

OP_NOP, OP_COPY, OP_FENCE, OP_TRAP, OP_POLL_REGMEM, OP_TIMESTAMP = 0, 1, 5, 6, 8, 13
SUBOP_COPY_LINEAR, SUBOP_TIMESTAMP_GET_GLOBAL = 0, 2
COPY_MAX_BYTES = 1 << 22          # SDMA 4 COPY_LINEAR: count is 22 bits of (bytes - 1) (also the kernel's copy_max_bytes)
COPY_MAX_BYTES_V6 = 1 << 30       # SDMA 6 COPY_LINEAR: count is 30 bits (sdma_v6_0_0_pkt_open.h; tinygrad cuts at 1 GiB too)
POLL_FUNC_EQUAL = 3               # POLL_REGMEM func: reference == (value & mask)
POLL_INTERVAL = 10                # POLL_REGMEM poll interval (clock units of 16)
POLL_RETRY_FOREVER = 0xFFF
FENCE_MTYPE_UC = 3                # SDMA 6 FENCE mtype: uncached, so the CPU sees the write
TRAP_CONTEXT_MASK = 0x0FFFFFFF


class Sdma4:
  """SDMA 4.x packets (4.4.2 on gfx942, 4.4.5 on gfx950)."""
  version = 4
  fence_header_extra = 0
  copy_max = COPY_MAX_BYTES

  def nop(self) -> bytes: return struct.pack("<I", OP_NOP)

  def copy_linear(self, dst: int, src: int, nbytes: int) -> bytes:
    assert 0 < nbytes <= self.copy_max
    return struct.pack("<7I", OP_COPY | SUBOP_COPY_LINEAR << 8, nbytes - 1, 0, src & 0xFFFFFFFF, src >> 32, dst & 0xFFFFFFFF, dst >> 32)

  def fence(self, addr: int, value: int) -> bytes:
    assert addr % 4 == 0
    return struct.pack("<4I", OP_FENCE | self.fence_header_extra, addr & 0xFFFFFFFF, addr >> 32, value & 0xFFFFFFFF)

  def trap(self, context: int) -> bytes: return struct.pack("<2I", OP_TRAP, context & TRAP_CONTEXT_MASK)

  def poll_equal(self, addr: int, value: int, mask: int = 0xFFFFFFFF) -> bytes:
    """Wait until (dword at addr) & mask == value."""
    assert addr % 4 == 0
    return struct.pack("<6I", OP_POLL_REGMEM | POLL_FUNC_EQUAL << 28 | 1 << 31, addr & 0xFFFFFFFF, addr >> 32, value, mask,
                       POLL_INTERVAL | POLL_RETRY_FOREVER << 16)

  def timestamp(self, addr: int) -> bytes:
    assert addr % 8 == 0
    return struct.pack("<3I", OP_TIMESTAMP | SUBOP_TIMESTAMP_GET_GLOBAL << 8, addr & 0xFFFFFFFF, addr >> 32)


class Sdma6(Sdma4):
  """SDMA 6.0 packets (gfx1100): as 4.x, a FENCE names its memory type, a copy counts 30 bits."""
  version = 6
  copy_max = COPY_MAX_BYTES_V6
  fence_header_extra = FENCE_MTYPE_UC << 16


def packets_for(sdma_version: tuple):
  if sdma_version[0] == 4: return Sdma4()
  if sdma_version[0] == 6: return Sdma6()
  raise AmdError(f"SDMA {'.'.join(map(str, sdma_version))} is not supported (4.x and 6.0 are)")
