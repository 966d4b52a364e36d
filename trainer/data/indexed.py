"""Megatron-LM "MMIDIDX" indexed token files: a writer and a memory-mapped reader.

A dataset is a pair of files sharing a path prefix. `PREFIX.bin` holds the tokens of every
sequence back to back. `PREFIX.idx` describes them, all integers little-endian:

    offset 0   9 bytes   magic b"MMIDIDX\\x00\\x00"
    offset 9   uint64    version, always 1
    offset 17  uint8     token dtype code (see DTYPE_CODES)
    offset 18  uint64    S, the number of sequences
    offset 26  uint64    D, the number of entries in the document index (documents + 1)
    offset 34  int32[S]  sequence lengths in tokens
               int64[S]  byte offset of each sequence in the .bin file
               int64[D]  document index: sequence number where each document starts, then S

This is the layout Megatron-LM writes and the MLPerf llama31_8b reference reads for its C4
files (`c4-train.en_<n>_text_document`, `c4-validation-91205-samples.en_text_document`).
"""

import os
import struct

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")

DTYPE_CODES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


class IndexedFormatError(ValueError):
    """An .idx/.bin pair that is truncated, corrupt or inconsistent."""


def idx_path(prefix):
    """The index file of the dataset at `prefix`."""
    return os.fspath(prefix) + ".idx"


def bin_path(prefix):
    """The token file of the dataset at `prefix`."""
    return os.fspath(prefix) + ".bin"


class IndexedWriter:
    """Writes a dataset document by document; files appear atomically on a clean close.

    Use as a context manager. Tokens go to `PREFIX.bin.tmp<pid>` and the index to `PREFIX.idx.tmp<pid>`;
    both are renamed into place only when the block exits without an exception, so readers
    never see a half-written dataset, and processes writing the same dataset at once (the hosts of a
    run sharing a cache folder) do not write into each other's files.
    """

    def __init__(self, prefix, dtype=np.int32):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no MMIDIDX code")
        self._lengths = []
        self._document_index = [0]
        self._tmp = f".tmp{os.getpid()}"
        self._bin = open(bin_path(self.prefix) + self._tmp, "wb")

    def add_document(self, tokens, sequence_lengths=None):
        """Append one document; `sequence_lengths` splits it into sequences (default: one)."""
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise ValueError("a document must be a 1-D array of tokens")
        cast = array.astype(self.dtype.newbyteorder("<"), copy=False)
        if not np.array_equal(cast, array):
            raise ValueError(f"tokens do not fit dtype {self.dtype}")
        lengths = [array.size] if sequence_lengths is None else [int(n) for n in sequence_lengths]
        if sum(lengths) != array.size or min(lengths, default=0) < 0:
            raise ValueError("sequence_lengths must be non-negative and sum to the document size")
        self._bin.write(cast.tobytes())
        self._lengths.extend(lengths)
        self._document_index.append(len(self._lengths))

    def close(self):
        """Write the index and move both files into place."""
        self._bin.close()
        lengths = np.asarray(self._lengths, dtype="<i4")
        pointers = np.zeros(len(lengths), dtype="<i8")
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.asarray(self._document_index, dtype="<i8")
        with open(idx_path(self.prefix) + self._tmp, "wb") as f:
            code = CODE_OF_DTYPE[self.dtype]
            f.write(HEADER.pack(MAGIC, VERSION, code, len(lengths), len(documents)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(documents.tobytes())
        os.replace(bin_path(self.prefix) + self._tmp, bin_path(self.prefix))
        os.replace(idx_path(self.prefix) + self._tmp, idx_path(self.prefix))

    def abort(self):
        """Drop everything written so far."""
        self._bin.close()
        for path in (bin_path(self.prefix) + self._tmp, idx_path(self.prefix) + self._tmp):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_indexed(prefix, documents, dtype=np.int32):
    """Write `documents` (an iterable of 1-D token arrays, one sequence each) at `prefix`."""
    with IndexedWriter(prefix, dtype) as writer:
        for document in documents:
            writer.add_document(document)


class IndexedDataset:
    """Read-only, memory-mapped view of an MMIDIDX dataset; every inconsistency is an error.

    `ds[i]` is sequence i (a read-only numpy view), `ds.document(j)` the tokens of document j.
    """

    def __init__(self, prefix):
        self.prefix = os.fspath(prefix)
        index_file, token_file = idx_path(self.prefix), bin_path(self.prefix)
        for path in (index_file, token_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"indexed dataset file missing: {path}")
        index = (np.memmap(index_file, dtype=np.uint8, mode="r")
                 if os.path.getsize(index_file) else b"")
        self._read_header(index_file, index)
        self._read_arrays(index_file, index)
        bin_size = os.path.getsize(token_file)
        self._check_pointers(index_file, token_file, bin_size)
        self._tokens = (np.memmap(token_file, dtype=np.uint8, mode="r") if bin_size
                        else np.zeros(0, np.uint8))

    def _read_header(self, path, index):
        if len(index) < HEADER.size:
            raise IndexedFormatError(f"{path}: truncated header ({len(index)} bytes)")
        fields = HEADER.unpack(bytes(index[:HEADER.size]))
        magic, version, code, self.num_sequences, entries = fields
        if magic != MAGIC:
            raise IndexedFormatError(f"{path}: bad magic {magic!r}, not an MMIDIDX index")
        if version != VERSION:
            raise IndexedFormatError(f"{path}: unsupported version {version}")
        if code not in DTYPE_CODES:
            raise IndexedFormatError(f"{path}: unknown dtype code {code}")
        self.dtype = DTYPE_CODES[code].newbyteorder("<")
        expected = HEADER.size + 12 * self.num_sequences + 8 * entries
        if len(index) != expected:
            raise IndexedFormatError(
                f"{path}: size {len(index)} bytes, header promises {expected} "
                f"({self.num_sequences} sequences, {entries} document entries)")
        if entries < 1:
            raise IndexedFormatError(f"{path}: empty document index")
        self._entries = entries

    def _read_arrays(self, path, index):
        start = HEADER.size
        self.sequence_lengths = np.frombuffer(index, "<i4", self.num_sequences, start)
        start += 4 * self.num_sequences
        self.sequence_pointers = np.frombuffer(index, "<i8", self.num_sequences, start)
        start += 8 * self.num_sequences
        self.document_indices = np.frombuffer(index, "<i8", self._entries, start)
        docs = self.document_indices
        if docs[0] != 0 or docs[-1] != self.num_sequences or np.any(np.diff(docs) < 0):
            raise IndexedFormatError(
                f"{path}: document index must rise from 0 to {self.num_sequences}")
        if np.any(self.sequence_lengths < 0):
            raise IndexedFormatError(f"{path}: negative sequence length")

    def _check_pointers(self, path, token_file, bin_size):
        ends = self.sequence_pointers + self.sequence_lengths.astype(np.int64) * self.dtype.itemsize
        if np.any(self.sequence_pointers < 0) or np.any(ends > bin_size):
            raise IndexedFormatError(
                f"{path}: sequence pointers run past the end of {token_file} ({bin_size} bytes)")
        if np.any(self.sequence_pointers % self.dtype.itemsize):
            raise IndexedFormatError(f"{path}: sequence pointer not aligned to {self.dtype}")
        described = int(ends.max()) if len(ends) else 0
        if described != bin_size:   # Megatron writes the sequences back to back and nothing else
            raise IndexedFormatError(
                f"{token_file}: {bin_size} bytes, but {path} describes {described} "
                f"({self.num_tokens} {self.dtype} tokens): the .bin and .idx do not belong together")

    @property
    def num_documents(self):
        """Number of documents (the document index has one more entry)."""
        return self._entries - 1

    @property
    def num_tokens(self):
        """Total tokens over all sequences."""
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def __len__(self):
        return self.num_sequences

    def read(self, sequence, offset=0, count=None):
        """`count` tokens of sequence `sequence` from token `offset` (default: to its end)."""
        length = int(self.sequence_lengths[sequence])
        count = length - offset if count is None else count
        if offset < 0 or count < 0 or offset + count > length:
            raise IndexError(f"{self.prefix}: tokens [{offset}, {offset + count}) outside "
                             f"sequence {sequence} of length {length}")
        start = int(self.sequence_pointers[sequence]) + offset * self.dtype.itemsize
        return self._tokens[start:start + count * self.dtype.itemsize].view(self.dtype)

    def __getitem__(self, sequence):
        return self.read(sequence)

    def document(self, number):
        """All tokens of document `number`, its sequences concatenated."""
        first, last = self.document_indices[number], self.document_indices[number + 1]
        return np.concatenate([self.read(i) for i in range(first, last)] or
                              [np.zeros(0, self.dtype)])
