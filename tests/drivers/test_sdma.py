"""SDMA packet encodings, field by field, against the layouts published in the Linux kernel's amdgpu
packet headers (vega10_sdma_pkt_open.h for SDMA 4.x as on gfx942 and gfx950; sdma_v6_0_0_pkt_open.h
for SDMA 6.0, gfx1100): each field as (dword, shift, width) from the header's _offset, _shift and
_mask, transcribed here, and every packet decoded with them."""
import struct
import pytest
from trainer.drivers.amd import sdma_packets as sdma

COMMON = {  # the same in both headers
  "COPY_LINEAR": {"op": (0, 0, 8), "sub_op": (0, 8, 8), "count": (1, 0, 22), "dst_swap": (2, 16, 2), "src_swap": (2, 24, 2),
                  "src_addr_31_0": (3, 0, 32), "src_addr_63_32": (4, 0, 32), "dst_addr_31_0": (5, 0, 32), "dst_addr_63_32": (6, 0, 32)},
  "FENCE": {"op": (0, 0, 8), "sub_op": (0, 8, 8), "addr_31_0": (1, 0, 32), "addr_63_32": (2, 0, 32), "data": (3, 0, 32)},
  "TRAP": {"op": (0, 0, 8), "sub_op": (0, 8, 8), "int_context": (1, 0, 28)},
  "POLL_REGMEM": {"op": (0, 0, 8), "sub_op": (0, 8, 8), "hdp_flush": (0, 26, 1), "func": (0, 28, 3), "mem_poll": (0, 31, 1),
                  "addr_31_0": (1, 0, 32), "addr_63_32": (2, 0, 32), "value": (3, 0, 32), "mask": (4, 0, 32),
                  "interval": (5, 0, 16), "retry_count": (5, 16, 12)},
  "TIMESTAMP_GET_GLOBAL": {"op": (0, 0, 8), "sub_op": (0, 8, 8), "addr_31_0": (1, 0, 32), "addr_63_32": (2, 0, 32)},
}
V6_FENCE = {"mtype": (0, 16, 3), "gcc": (0, 19, 1), "sys": (0, 20, 1), "snp": (0, 22, 1), "l2_policy": (0, 24, 2)}
LENGTH = {"COPY_LINEAR": 7, "FENCE": 4, "TRAP": 2, "POLL_REGMEM": 6, "TIMESTAMP_GET_GLOBAL": 3}
SRC, DST, ADDR = 0x7F12_3456_7000, 0x7E00_0ABC_D040, 0x7FFF_DEAD_BEE8


def decode(packet: bytes, layout: dict) -> dict:
  dws = struct.unpack(f"<{len(packet) // 4}I", packet)
  return {name: (dws[dw] >> shift) & ((1 << width) - 1) for name, (dw, shift, width) in layout.items()}


@pytest.mark.parametrize("version,ip", [(4, (4, 4, 2)), (4, (4, 4, 5)), (6, (6, 0, 0))])
def test_packets_decode_to_what_was_asked(version, ip):
  pk = sdma.packets_for(ip)
  assert pk.version == version
  fence_layout = COMMON["FENCE"] | (V6_FENCE if version == 6 else {})
  cases = [("COPY_LINEAR", pk.copy_linear(DST, SRC, 12345), COMMON["COPY_LINEAR"],
            dict(op=1, sub_op=0, count=12344, src_addr_31_0=SRC & 0xFFFFFFFF, src_addr_63_32=SRC >> 32, dst_addr_31_0=DST & 0xFFFFFFFF,
                 dst_addr_63_32=DST >> 32, dst_swap=0, src_swap=0)),
           ("FENCE", pk.fence(ADDR, 0xCAFE0001), fence_layout,
            dict(op=5, sub_op=0, addr_31_0=ADDR & 0xFFFFFFFF, addr_63_32=ADDR >> 32, data=0xCAFE0001, **({"mtype": 3} if version == 6 else {}))),
           ("TRAP", pk.trap(0x1234567), COMMON["TRAP"], dict(op=6, sub_op=0, int_context=0x1234567)),
           ("POLL_REGMEM", pk.poll_equal(ADDR, 0, 0xFFFFFFFF), COMMON["POLL_REGMEM"],
            dict(op=8, sub_op=0, hdp_flush=0, func=3, mem_poll=1, addr_31_0=ADDR & 0xFFFFFFFF, addr_63_32=ADDR >> 32, value=0,
                 mask=0xFFFFFFFF, interval=sdma.POLL_INTERVAL, retry_count=0xFFF)),
           ("TIMESTAMP_GET_GLOBAL", pk.timestamp(ADDR), COMMON["TIMESTAMP_GET_GLOBAL"],
            dict(op=13, sub_op=2, addr_31_0=ADDR & 0xFFFFFFFF, addr_63_32=ADDR >> 32))]
  for name, packet, layout, want in cases:
    assert len(packet) == 4 * LENGTH[name], name
    got = decode(packet, layout)
    assert {k: got[k] for k in want} == want, name
  assert pk.nop() == b"\0\0\0\0"


def test_copy_limits():
  pk = sdma.packets_for((4, 4, 2))
  assert decode(pk.copy_linear(DST, SRC, sdma.COPY_MAX_BYTES), COMMON["COPY_LINEAR"])["count"] == (1 << 22) - 1
  with pytest.raises(AssertionError): pk.copy_linear(DST, SRC, sdma.COPY_MAX_BYTES + 1)
  with pytest.raises(AssertionError): pk.fence(ADDR + 2, 1)   # fences write aligned dwords
