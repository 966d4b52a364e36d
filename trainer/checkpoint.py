"""Checkpoints at the numpy level: safetensors files, strict loading, atomic checkpoint directories.

Tensors are numpy arrays tagged with a dtype name. The names are numpy's ("float32", "int64", ...)
plus "bfloat16": numpy has no bfloat16, so a bf16 tensor travels as a np.uint16 array of bf16 bit
patterns tagged "bfloat16", and is stored with dtype BF16 in the safetensors header so other tools
read real bf16. `save_tensors` takes plain arrays (tagged with their own dtype) or `TensorData`
(array, dtype) pairs; `load_tensors` always returns `TensorData`, so its output saves back unchanged.

`CheckpointManager` keeps a directory of checkpoints, one per step:

    DIR/step_00001000/tensors.safetensors    (or tensors_rank<h>.safetensors, one per host of a multi-host run)
    DIR/step_00001000/state.json             {"step": ..., "state": {RNG counter, data position, ...}}
    DIR/step_00001000/COMPLETE               JSON: size and sha256 of every other file

A checkpoint is written into a hidden temporary directory, every file and the directory are
fsynced, and the directory is renamed into place, so a crash leaves either the whole checkpoint or
none of it. `latest()` verifies the marker and checksums and falls back past torn or corrupted
checkpoints with a warning. One manager writes to a directory at a time.

On several hosts (a shared file system) every host writes its own tensors_rank<h>.safetensors into the same
temporary directory; host 0 writes state.json and the marker only after every host has durably written its file
and reported its size and checksum, then renames the directory: the checkpoint exists complete or not at all.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence, Union

import numpy as np
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file

log = logging.getLogger(__name__)

# dtype name -> safetensors header code. "bfloat16" arrays are np.uint16 words.
_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
}
_NAMES = {code: name for name, code in _CODES.items()}

_STEP_DIR = re.compile(r"step_(\d{8,})")
_MARKER = "COMPLETE"
_STATE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing, torn, corrupted or does not match what was expected."""


class TensorData(NamedTuple):
    """A numpy array and the dtype name it stands for ("bfloat16" for np.uint16 bf16 words)."""

    array: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple:
        return self.array.shape


TensorLike = Union[np.ndarray, TensorData, tuple]


def _storage_dtype(dtype: str) -> np.dtype:
    """The little-endian numpy dtype that holds tensors of dtype name `dtype`."""
    return np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder("<")


def as_tensor_data(name: str, value: TensorLike) -> TensorData:
    """Normalize an array or an (array, dtype) pair to TensorData, checking the pair is consistent."""
    array, dtype = (value if isinstance(value, tuple) else (value, None))
    array = np.asarray(array)
    dtype = dtype or array.dtype.name
    if dtype not in _CODES:
        raise CheckpointError(f"tensor {name!r}: unsupported dtype {dtype!r} (supported: {', '.join(_CODES)})")
    if array.dtype.newbyteorder("<") != _storage_dtype(dtype):
        want = "np.uint16 bf16 words" if dtype == "bfloat16" else dtype
        raise CheckpointError(f"tensor {name!r}: dtype {dtype!r} needs a {want} array, got {array.dtype}")
    return TensorData(array, dtype)


def save_tensors(path, tensors: Mapping[str, TensorLike], metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (arrays or (array, dtype) pairs) and string `metadata` to a safetensors file."""
    specs, keep_alive = {}, []
    for name, value in tensors.items():
        data = as_tensor_data(name, value)
        array = np.require(data.array, dtype=_storage_dtype(data.dtype), requirements="C")
        keep_alive.append(array)  # the specs hold raw pointers into these buffers
        specs[name] = TensorSpec(dtype=data.dtype, shape=array.shape,
                                 data_ptr=array.ctypes.data, data_len=array.nbytes)
    serialize_file(specs, os.fspath(path), metadata=dict(metadata) if metadata else None)


def _read_header(path) -> tuple[dict, int]:
    """The safetensors JSON header of `path` (validated by safetensors) and the offset of its data."""
    try:
        with safe_open(os.fspath(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size)), 8 + size


def read_metadata(path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    return _read_header(path)[0].get("__metadata__") or {}


def load_tensors(path) -> dict[str, TensorData]:
    """Read every tensor of a safetensors file as TensorData (bf16 as np.uint16 words)."""
    header, start = _read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _NAMES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            dtype = _NAMES[info["dtype"]]
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            storage = _storage_dtype(dtype)
            array = np.fromfile(f, dtype=storage, count=(end - begin) // storage.itemsize)
            out[name] = TensorData(array.astype(storage.newbyteorder("="), copy=False).reshape(info["shape"]), dtype)
    return out


def load_state_dict_strict(path_or_dict, expected: Mapping[str, tuple[Sequence[int], str]]) -> dict[str, TensorData]:
    """Load a safetensors file (or take a dict of tensors) and check it holds exactly `expected`.

    `expected` maps each tensor name to (shape, dtype name). Every missing, unexpected, wrongly
    shaped or wrongly typed tensor is named in one CheckpointError.
    """
    if isinstance(path_or_dict, Mapping):
        label = "checkpoint"
        tensors = {name: as_tensor_data(name, value) for name, value in path_or_dict.items()}
    else:
        label = f"checkpoint {os.fspath(path_or_dict)}"
        tensors = load_tensors(path_or_dict)
    problems = [f"missing tensor {name!r}" for name in expected if name not in tensors]
    problems += [f"unexpected {name!r}" for name in tensors if name not in expected]
    for name, (shape, dtype) in expected.items():
        if name not in tensors:
            continue
        got = tensors[name]
        if tuple(got.shape) != tuple(shape):
            problems.append(f"{name!r} has shape {tuple(got.shape)}, expected {tuple(shape)}")
        if got.dtype != dtype:
            problems.append(f"{name!r} has dtype {got.dtype}, expected {dtype}")
    if problems:
        raise CheckpointError(f"{label}: " + "; ".join(problems))
    return tensors


def load_hf_safetensors(folder) -> dict[str, TensorData]:
    """Load published Hugging Face weights: `model.safetensors`, or an index plus its shard files."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if not os.path.exists(index_path):
        if not os.path.exists(single):
            raise CheckpointError(f"{folder}: neither model.safetensors nor model.safetensors.index.json found")
        return load_tensors(single)
    with open(index_path) as f:
        weight_map: dict[str, str] = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
    if missing:
        raise CheckpointError(f"{index_path}: missing shard file(s) {', '.join(missing)}")
    out = {}
    for shard in shards:
        out.update(load_tensors(os.path.join(folder, shard)))
    absent = [f"{name!r} (in {shard})" for name, shard in weight_map.items() if name not in out]
    if absent:
        raise CheckpointError(f"{index_path}: tensor(s) listed in the index but not in their shard: {', '.join(absent)}")
    return {name: out[name] for name in weight_map}


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_and_digest(path) -> dict:
    """Flush a written file to disk and return its size and sha256."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"size": os.path.getsize(path), "sha256": _sha256(path)}


def _tensor_file(rank: int | None) -> str:
    return "tensors.safetensors" if rank is None else f"tensors_rank{rank}.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A complete, verified checkpoint directory. `ranks` is the shard count, None when unsharded."""

    path: str
    step: int
    state: dict
    ranks: int | None

    def tensor_path(self, rank: int | None = None) -> str:
        """The safetensors file of `rank` (None for an unsharded checkpoint)."""
        if (rank is None) != (self.ranks is None) or (rank is not None and not 0 <= rank < self.ranks):
            written = "unsharded" if self.ranks is None else f"by {self.ranks} ranks"
            raise CheckpointError(f"checkpoint {self.path} was written {written}; cannot load rank {rank} "
                                  "(resume on the same mesh)")
        return os.path.join(self.path, _tensor_file(rank))

    def tensors(self, rank: int | None = None) -> dict[str, TensorData]:
        """Load the tensors of `rank` (None for an unsharded checkpoint)."""
        return load_tensors(self.tensor_path(rank))

    def all_tensors(self) -> dict[str, TensorData]:
        """Every rank's tensors in one dict (the ranks' names never collide)."""
        out = {}
        for rank in (range(self.ranks) if self.ranks is not None else [None]):
            out.update(self.tensors(rank))
        return out


def verify_checkpoint(path) -> Checkpoint:
    """Check a checkpoint directory's marker, checksums, state JSON and safetensors headers."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such folder")
    if not os.path.exists(os.path.join(path, _MARKER)) and not os.path.exists(os.path.join(path, _STATE)):
        raise CheckpointError(f"{path} is not a checkpoint folder (no {_MARKER} marker or {_STATE})")
    try:
        with open(os.path.join(path, _MARKER)) as f:
            marker = json.load(f)
        files, ranks = marker["files"], marker["ranks"]
        expected = {_STATE} | {_tensor_file(r) for r in (range(ranks) if ranks is not None else [None])}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no {_MARKER} marker (torn write?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {_MARKER} marker: {e!r}") from None
    if set(files) != expected:
        raise CheckpointError(f"checkpoint {path}: marker lists {sorted(files)}, expected {sorted(expected)}")
    for name, want in files.items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise CheckpointError(f"checkpoint {path}: missing file {name}")
        if os.path.getsize(file) != want["size"]:
            raise CheckpointError(f"checkpoint {path}: {name} has {os.path.getsize(file)} bytes, expected {want['size']}")
        if _sha256(file) != want["sha256"]:
            raise CheckpointError(f"checkpoint {path}: checksum mismatch in {name} (corrupted)")
    try:
        with open(os.path.join(path, _STATE)) as f:
            saved = json.load(f)
        step, state = int(saved["step"]), saved["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable {_STATE}: {e!r}") from None
    for name in expected - {_STATE}:
        _read_header(os.path.join(path, name))
    return Checkpoint(path, step, state, ranks)


class CheckpointManager:
    """Atomic step_<08d> checkpoint directories under `directory`, keeping the newest `keep`."""

    def __init__(self, directory, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = os.fspath(directory)
        self.keep = keep

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, f"step_{step:08d}")

    def _steps(self) -> list[tuple[int, str]]:
        """(step, path) of every step directory, oldest first; complete or not."""
        if not os.path.isdir(self.directory):
            return []
        found = [(m, e) for e in os.listdir(self.directory) if (m := _STEP_DIR.fullmatch(e))]
        return sorted((int(m.group(1)), os.path.join(self.directory, e)) for m, e in found)

    def save(self, step: int, tensors: Mapping[str, TensorLike] | Sequence[Mapping[str, TensorLike]],
             state: Mapping[str, Any], hosts=None) -> Checkpoint:
        """Atomically write checkpoint `step`, then prune to the newest `keep` complete ones.

        `tensors` is one dict for an unsharded run, or a list of dicts, one per rank, for a sharded
        run (tensors_rank<r>.safetensors). `state` is any JSON-able dict (RNG counter, data position,
        MLPerf bookkeeping). Saving a step that exists replaces it. With `hosts` (parallel/hosts.py) of
        more than one host, every host calls this with its own tensors dict (module docstring).
        """
        if hosts is not None and hosts.size > 1:
            return self._save_hosts(step, tensors, state, hosts)
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f".tmp_step_{step:08d}_{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)
        shards = [(None, tensors)] if isinstance(tensors, Mapping) else list(enumerate(tensors))
        files = {}
        for rank, shard in shards:
            name = _tensor_file(rank)
            save_tensors(os.path.join(tmp, name), shard, {"step": str(step)})
            files[name] = _fsync_and_digest(os.path.join(tmp, name))
        ranks = None if isinstance(tensors, Mapping) else len(shards)
        return self._complete(tmp, step, state, files, ranks)

    def _save_hosts(self, step, tensors, state, hosts) -> Checkpoint:
        """The multi-host protocol: host 0 makes the temporary directory, each host writes and fsyncs its file and
        reports its digest, host 0 completes the checkpoint, and every host waits for that."""
        tmp = os.path.join(self.directory, f".tmp_step_{step:08d}_hosts")
        if hosts.rank == 0:
            os.makedirs(self.directory, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp)
        hosts.barrier()
        name = _tensor_file(hosts.rank)
        save_tensors(os.path.join(tmp, name), tensors, {"step": str(step)})
        files = dict(hosts.allgather((name, _fsync_and_digest(os.path.join(tmp, name)))))
        done = self._complete(tmp, step, state, files, hosts.size) if hosts.rank == 0 else None
        hosts.barrier()
        return done or Checkpoint(self.step_path(step), step, dict(state), hosts.size)

    def _complete(self, tmp, step, state, files, ranks) -> Checkpoint:
        """state.json and the marker into tmp (whose tensor files are durable), then rename it into place."""
        state_json = json.dumps({"step": step, "state": dict(state)}, indent=1, sort_keys=True)
        final = self.step_path(step)
        with open(os.path.join(tmp, _STATE), "w") as f:
            f.write(state_json)
        files[_STATE] = _fsync_and_digest(os.path.join(tmp, _STATE))
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump({"step": step, "ranks": ranks, "files": files}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if os.path.exists(final):
            old = os.path.join(self.directory, f".old_step_{step:08d}_{os.getpid()}")
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        if old:
            shutil.rmtree(old)
        self._prune()
        return Checkpoint(final, step, dict(state), ranks)

    def _prune(self) -> None:
        """Delete all but the newest `keep` complete checkpoints, older torn ones, and stale temp dirs."""
        complete = [(s, p) for s, p in self._steps() if os.path.exists(os.path.join(p, _MARKER))]
        if len(complete) > self.keep:
            oldest_kept = complete[-self.keep][0]
            for step, path in self._steps():
                if step < oldest_kept:
                    shutil.rmtree(path)
        for entry in os.listdir(self.directory):
            if entry.startswith((".tmp_step_", ".old_step_")):
                shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)

    def latest(self) -> Checkpoint | None:
        """The newest complete and verified checkpoint, warning about each broken one skipped."""
        for _, path in reversed(self._steps()):
            try:
                return verify_checkpoint(path)
            except CheckpointError as e:
                warnings.warn(f"skipping checkpoint: {e}", RuntimeWarning, stacklevel=2)
        return None

    def load(self, path_or_step: Union[int, str, os.PathLike]) -> Checkpoint:
        """Verify and return one checkpoint, by step number or directory; raise CheckpointError if broken."""
        path = self.step_path(int(path_or_step)) if isinstance(path_or_step, (int, np.integer)) else path_or_step
        return verify_checkpoint(path)

    def resume_auto(self) -> Checkpoint | None:
        """`--resume auto`: the latest verified checkpoint, or None to start fresh; logs the choice."""
        ckpt = self.latest()
        if ckpt is None:
            log.info("no checkpoint in %s; starting fresh", self.directory)
        else:
            log.info("resuming from %s (step %d)", ckpt.path, ckpt.step)
        return ckpt
