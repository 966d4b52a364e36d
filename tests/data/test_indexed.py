"""MMIDIDX files: byte-exact layout, round trip, and clear errors for damaged files."""

import os
import struct

import numpy as np
import pytest

from trainer.data.indexed import (IndexedDataset, IndexedFormatError, IndexedWriter,
                                  write_indexed)


def hand_made_index(code, lengths, itemsize, document_index):
    """The .idx bytes assembled field by field from the documented Megatron layout."""
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    out += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(document_index))
    out += b"".join(struct.pack("<i", n) for n in lengths)
    pointer = 0
    for n in lengths:
        out += struct.pack("<q", pointer)
        pointer += n * itemsize
    out += b"".join(struct.pack("<q", d) for d in document_index)
    return out


def test_int32_file_matches_hand_assembled_bytes(tmp_path):
    documents = [[1, 2, 3], [70000], [], [5, -6]]
    write_indexed(tmp_path / "c4", documents, np.int32)
    expected_idx = hand_made_index(4, [3, 1, 0, 2], 4, [0, 1, 2, 3, 4])
    expected_bin = b"".join(struct.pack("<i", t) for doc in documents for t in doc)
    assert (tmp_path / "c4.idx").read_bytes() == expected_idx
    assert (tmp_path / "c4.bin").read_bytes() == expected_bin


def test_uint16_multi_sequence_documents_match_hand_assembled_bytes(tmp_path):
    with IndexedWriter(tmp_path / "d", np.uint16) as writer:
        writer.add_document([10, 11, 12, 13], sequence_lengths=[1, 3])
        writer.add_document([65535])
    assert (tmp_path / "d.idx").read_bytes() == hand_made_index(8, [1, 3, 1], 2, [0, 2, 3])
    assert (tmp_path / "d.bin").read_bytes() == struct.pack("<5H", 10, 11, 12, 13, 65535)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 128256, rng.integers(0, 50)) for _ in range(30)]
    write_indexed(tmp_path / "x", documents)
    ds = IndexedDataset(tmp_path / "x")
    assert len(ds) == 30 and ds.num_documents == 30 and ds.dtype == np.int32
    assert ds.num_tokens == sum(len(d) for d in documents)
    for i, doc in enumerate(documents):
        np.testing.assert_array_equal(ds[i], doc)
        np.testing.assert_array_equal(ds.document(i), doc)
    np.testing.assert_array_equal(ds.read(3, 1, 2), documents[3][1:3])
    with pytest.raises(IndexError):
        ds.read(3, 0, len(documents[3]) + 1)


def test_writer_refuses_tokens_outside_dtype(tmp_path):
    with pytest.raises(ValueError, match="fit"):
        write_indexed(tmp_path / "x", [[1, 300]], np.uint8)
    assert not os.listdir(tmp_path)


@pytest.fixture
def small(tmp_path):
    write_indexed(tmp_path / "s", [[1, 2, 3], [4, 5]])
    return tmp_path / "s"


def damage_idx(prefix, offset, data):
    path = str(prefix) + ".idx"
    raw = bytearray(open(path, "rb").read())
    raw[offset:offset + len(data)] = data
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("suffix", [".idx", ".bin"])
def test_missing_file_names_it(small, suffix):
    os.remove(str(small) + suffix)
    with pytest.raises(FileNotFoundError, match=f"s\\{suffix}"):
        IndexedDataset(small)


@pytest.mark.parametrize("damage, message", [
    ((0, b"NOTMAGIC!"), "bad magic"),
    ((9, struct.pack("<Q", 2)), "version"),
    ((17, b"\x09"), "dtype code"),
    ((18, struct.pack("<Q", 3)), "size"),
    ((34 + 8 + 8, struct.pack("<q", 16)), "pointers"),
    ((34 + 8 + 16 + 16, struct.pack("<q", 5)), "document index"),
])
def test_corrupt_index_is_a_clear_error(small, damage, message):
    damage_idx(small, *damage)
    with pytest.raises(IndexedFormatError, match=message) as info:
        IndexedDataset(small)
    assert "s.idx" in str(info.value)


def test_truncated_files_are_errors(small):
    idx = str(small) + ".idx"
    full = open(idx, "rb").read()
    open(idx, "wb").write(full[:-3])
    with pytest.raises(IndexedFormatError, match="size"):
        IndexedDataset(small)
    open(idx, "wb").write(full[:20])
    with pytest.raises(IndexedFormatError, match="truncated header"):
        IndexedDataset(small)
    open(idx, "wb").write(full)
    bin_file = str(small) + ".bin"
    open(bin_file, "wb").write(open(bin_file, "rb").read()[:-4])
    with pytest.raises(IndexedFormatError, match="past"):
        IndexedDataset(small)


@pytest.mark.parametrize("damage", ["longer bin", "other dtype"])
def test_bin_and_idx_that_do_not_belong_together(small, damage):
    """A .bin with more bytes than its .idx describes, or an .idx read with another token size: caught, not read as garbage."""
    if damage == "longer bin":
        with open(str(small) + ".bin", "ab") as f:
            f.write(b"\0" * 8)
    else:
        damage_idx(small, 17, bytes([8]))   # uint16 for int32 tokens: half the bytes described
    with pytest.raises(IndexedFormatError, match="do not belong together") as info:
        IndexedDataset(small)
    assert "s.bin" in str(info.value) and "s.idx" in str(info.value)
