"""A msgpack decoder (the format of AMDGPU code-object metadata notes): maps, arrays, strings,
binary, integers, floats, nil and booleans. Decoding only; no extension types are used there."""
from __future__ import annotations
import struct

_FIXED = {0xc0: None, 0xc2: False, 0xc3: True}
_INTS = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
_STR = {0xd9: ">B", 0xda: ">H", 0xdb: ">I", 0xc4: ">B", 0xc5: ">H", 0xc6: ">I"}
_ARR = {0xdc: ">H", 0xdd: ">I"}
_MAP = {0xde: ">H", 0xdf: ">I"}


def unpack(data: bytes):
  value, end = _decode(data, 0)
  if end != len(data): raise ValueError(f"msgpack: {len(data) - end} bytes after the value")
  return value


def _take(data, pos, fmt):
  n = struct.calcsize(fmt)
  return struct.unpack_from(fmt, data, pos)[0], pos + n


def _decode(data: bytes, pos: int):
  b = data[pos]; pos += 1
  if b <= 0x7f: return b, pos
  if b >= 0xe0: return b - 0x100, pos
  if 0xa0 <= b <= 0xbf: return data[pos:pos + (b & 0x1f)].decode(), pos + (b & 0x1f)
  if 0x90 <= b <= 0x9f: return _array(data, pos, b & 0x0f)
  if 0x80 <= b <= 0x8f: return _map(data, pos, b & 0x0f)
  if b in _FIXED: return _FIXED[b], pos
  if b in _INTS: return _take(data, pos, _INTS[b])
  if b in _STR:
    n, pos = _take(data, pos, _STR[b])
    raw = data[pos:pos + n]
    return (raw.decode() if b >= 0xd9 else bytes(raw)), pos + n
  if b in _ARR:
    n, pos = _take(data, pos, _ARR[b]); return _array(data, pos, n)
  if b in _MAP:
    n, pos = _take(data, pos, _MAP[b]); return _map(data, pos, n)
  raise ValueError(f"msgpack: unsupported type byte {b:#x} at {pos - 1}")


def _array(data, pos, n):
  out = []
  for _ in range(n):
    v, pos = _decode(data, pos); out.append(v)
  return out, pos


def _map(data, pos, n):
  out = {}
  for _ in range(n):
    k, pos = _decode(data, pos)
    out[k], pos = _decode(data, pos)
  return out, pos
