"""AMDGPU code objects (ELF64, e_machine EM_AMDGPU): sections, symbols, program headers, the
NT_AMDGPU_METADATA note (msgpack: kernels, their kernarg layout and segment sizes, wave size) and
each kernel's 64-byte descriptor (the `<name>.kd` symbol), as LLVM's AMDGPUUsage documents them."""
from __future__ import annotations
import struct
from dataclasses import dataclass
from . import msgpack

EM_AMDGPU = 224
PT_LOAD = 1
SHT_SYMTAB, SHT_NOTE, SHT_RELA = 2, 7, 4
NT_AMDGPU_METADATA = 32
R_AMDGPU_RELATIVE64 = 13
KD_BYTES = 64
KD_WAVE32_BIT = 1 << 10          # kernel_code_properties: ENABLE_WAVEFRONT_SIZE32
SOURCE_SYMBOL = "trainer_source"  # the kernel source our codegen embeds (codegen/amd.py)
# the loader's layout (device.Gpu.load): the code object file at the start of its buffer, the loaded image
# after it at this alignment (kernel code needs 256), so a descriptor address leads back to the file
CODE_ALIGN = 256


@dataclass
class Descriptor:
  """The kernel descriptor (amd_kernel_descriptor_t of code object v4+)."""
  group_segment_fixed_size: int
  private_segment_fixed_size: int
  kernarg_size: int
  kernel_code_entry_byte_offset: int
  compute_pgm_rsrc3: int
  compute_pgm_rsrc1: int
  compute_pgm_rsrc2: int
  kernel_code_properties: int

  @classmethod
  def parse(cls, raw: bytes):
    g, p, k = struct.unpack_from("<3I", raw, 0)
    entry, = struct.unpack_from("<q", raw, 16)
    r3, r1, r2 = struct.unpack_from("<3I", raw, 44)
    props, = struct.unpack_from("<H", raw, 56)
    return cls(g, p, k, entry, r3, r1, r2, props)

  @property
  def wave_size(self) -> int: return 32 if self.kernel_code_properties & KD_WAVE32_BIT else 64


@dataclass
class Kernel:
  name: str
  kd_offset: int             # where the descriptor is, relative to the image base
  descriptor: Descriptor
  meta: dict                 # this kernel's entry of amdhsa.kernels

  @property
  def args(self) -> list: return self.meta.get(".args", [])


class CodeObject:
  def __init__(self, image: bytes):
    self.image = bytes(image)
    if self.image[:4] != b"\x7fELF" or self.image[4] != 2: raise ValueError("not an ELF64 file")
    (self.e_machine,) = struct.unpack_from("<H", self.image, 18)
    if self.e_machine != EM_AMDGPU: raise ValueError(f"not an AMDGPU code object (e_machine {self.e_machine})")
    (self.e_flags,) = struct.unpack_from("<I", self.image, 48)
    phoff, shoff = struct.unpack_from("<QQ", self.image, 32)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<5H", self.image, 54)
    self.segments = [struct.unpack_from("<IIQQQQQQ", self.image, phoff + i * phentsize) for i in range(phnum)]
    self.sections = [struct.unpack_from("<IIQQQQIIQQ", self.image, shoff + i * shentsize) for i in range(shnum)]
    names = self.sections[shstrndx]
    self.section_names = [self._str(names[4], s[0]) for s in self.sections]
    self.symbols = self._symbols()
    self.metadata = self._metadata()
    self.kernels = {}
    for k in self.metadata.get("amdhsa.kernels", []):
      off = self.symbols[k[".symbol"]][0]
      raw = self.read(off, KD_BYTES)
      self.kernels[k[".name"]] = Kernel(k[".name"], off, Descriptor.parse(raw), k)

  def _str(self, table_off: int, i: int) -> str:
    end = self.image.index(b"\0", table_off + i)
    return self.image[table_off + i:end].decode()

  def _symbols(self) -> dict:
    """name -> (value, size) of the static symbol table."""
    out = {}
    for s in self.sections:
      if s[1] != SHT_SYMTAB: continue
      strtab = self.sections[s[6]][4]
      for i in range(s[5] // s[9]):
        name, info, other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.image, s[4] + i * s[9])
        if name: out[self._str(strtab, name)] = (value, size)
    return out

  def _metadata(self) -> dict:
    for s in self.sections:
      if s[1] != SHT_NOTE: continue
      pos, end = s[4], s[4] + s[5]
      while pos < end:
        namesz, descsz, typ = struct.unpack_from("<3I", self.image, pos)
        name = self.image[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc = pos + 12 + (-(-namesz // 4) * 4)
        if name == b"AMDGPU" and typ == NT_AMDGPU_METADATA: return msgpack.unpack(self.image[desc:desc + descsz])
        pos = desc + (-(-descsz // 4) * 4)
    raise ValueError("code object has no NT_AMDGPU_METADATA note")

  def read(self, vaddr: int, n: int) -> bytes:
    """n bytes at image address vaddr (from the loadable segment that holds them)."""
    for typ, _, off, va, _, filesz, memsz, _ in self.segments:
      if typ == PT_LOAD and va <= vaddr and vaddr + n <= va + memsz:
        data = self.image[off + vaddr - va: off + min(vaddr + n - va, filesz)]
        return data + b"\0" * (n - len(data))
    raise ValueError(f"address {vaddr:#x} is in no loadable segment")

  @property
  def target(self) -> str: return self.metadata["amdhsa.target"]

  def image_size(self) -> int:
    """Bytes the loaded segments span from address 0."""
    return max((va + memsz for typ, _, _, va, _, _, memsz, _ in self.segments if typ == PT_LOAD), default=0)

  def loaded(self) -> bytearray:
    """The image as loaded at address 0: each PT_LOAD segment at its address, relocations applied
    relative to 0 (the loader adds the base to the RELATIVE64 ones: see `relocations`)."""
    out = bytearray(self.image_size())
    for typ, _, off, va, _, filesz, _, _ in self.segments:
      if typ == PT_LOAD: out[va:va + filesz] = self.image[off:off + filesz]
    return out

  def relocations(self) -> list[tuple[int, int]]:
    """(offset, addend) of each R_AMDGPU_RELATIVE64: the loader stores base + addend at base + offset."""
    out = []
    for s in self.sections:
      if s[1] != SHT_RELA: continue
      for i in range(s[5] // s[9]):
        off, info, addend = struct.unpack_from("<QQq", self.image, s[4] + i * s[9])
        if info & 0xFFFFFFFF != R_AMDGPU_RELATIVE64: raise ValueError(f"unsupported relocation type {info & 0xFFFFFFFF}")
        out.append((off, addend))
    return out

  def source(self) -> str | None:
    """The kernel source our codegen embedded in the code object, if it did."""
    if SOURCE_SYMBOL not in self.symbols: return None
    va, size = self.symbols[SOURCE_SYMBOL]
    return self.read(va, size).rstrip(b"\0").decode()
