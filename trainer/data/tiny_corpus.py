"""Generated token datasets in the C4 file naming of the llama31_8b reference.

Both datasets here are GENERATED locally; training on them measures nothing about C4 and no
number obtained with them is an MLPerf benchmark result.

- `build_byte_corpus`: the Python standard library's own source text, as bytes (vocabulary
  256, byte 0 ends each document), for the tiny CPU llama recipe. Present in every Python
  installation, so the recipe needs no download.
- `build_markov_c4`: a low-entropy Markov chain over a given vocabulary, cut into sequences of
  seq_len + 1 tokens, so a tiny model quickly reaches a low validation log perplexity; used to
  exercise the MLPerf llama31_8b logging and stopping path end to end.

Each builder writes into a folder with a manifest and reuses the files when the manifest
matches and the files read back without error, so calling it again costs nothing.
"""

import json
import math
import os
import sys
import sysconfig

import numpy as np

from trainer.data.indexed import IndexedDataset, IndexedFormatError, IndexedWriter

TRAIN_NAME = "c4-train.en_6_text_document"
VALIDATION_NAME = "c4-validation-91205-samples.en_text_document"
MANIFEST = "manifest.json"
END_OF_DOCUMENT = 0


def default_cache_dir():
    """`$TRAINER_CACHE`, else ~/.cache/trainer."""
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "trainer")
    return os.environ.get("TRAINER_CACHE") or home_cache


def _prefixes(folder):
    return os.path.join(folder, TRAIN_NAME), os.path.join(folder, VALIDATION_NAME)


def _cached(folder, manifest):
    """Whether `folder` already holds valid files written for `manifest`."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            if json.load(f) != manifest:
                return False
        for prefix in _prefixes(folder):
            IndexedDataset(prefix)
    except (OSError, ValueError, IndexedFormatError):
        return False
    return True


def _start_build(folder):
    """Create `folder` and drop any old manifest, so a build cut short is never reused."""
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, MANIFEST)):
        os.remove(os.path.join(folder, MANIFEST))


def _write_manifest(folder, manifest):
    path, tmp = os.path.join(folder, MANIFEST), os.path.join(folder, f"{MANIFEST}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def stdlib_text_files():
    """Sorted paths of the standard library's .py and .txt files (no site-packages, no tests)."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in skip]
        found.extend(os.path.join(directory, name) for name in files
                     if name.endswith((".py", ".txt")))
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def build_byte_corpus(folder=None, train_bytes=4_000_000, validation_bytes=200_000,
                      validation_every=20):
    """Write the standard-library byte corpus; returns (train_prefix, validation_prefix).

    Files are taken in sorted order; every `validation_every`-th one goes to validation. Each
    file is one document of its bytes followed by byte 0 (files containing byte 0 are skipped).
    A split stops taking files once it holds its byte budget.
    """
    folder = folder or os.path.join(default_cache_dir(), "tiny_corpus")
    manifest = {"kind": "stdlib-bytes", "python": sys.version,
                "stdlib": sysconfig.get_paths()["stdlib"], "train_bytes": train_bytes,
                "validation_bytes": validation_bytes,
                "validation_every": validation_every}
    if _cached(folder, manifest):
        return _prefixes(folder)
    _start_build(folder)
    train_prefix, validation_prefix = _prefixes(folder)
    budget = [train_bytes, validation_bytes]
    with IndexedWriter(train_prefix, np.uint8) as train, \
            IndexedWriter(validation_prefix, np.uint8) as validation:
        writers = [train, validation]
        for number, path in enumerate(stdlib_text_files()):
            if max(budget) <= 0:
                break
            split = int(number % validation_every == 0)
            if budget[split] <= 0:
                continue
            with open(path, "rb") as f:
                data = f.read()
            if END_OF_DOCUMENT in data:
                continue
            document = np.frombuffer(data + bytes([END_OF_DOCUMENT]), np.uint8)
            writers[split].add_document(document)
            budget[split] -= document.size
    if max(budget) > 0:
        raise RuntimeError(
            f"standard library at {manifest['stdlib']} too small for the byte budgets")
    _write_manifest(folder, manifest)
    return train_prefix, validation_prefix


def markov_entropy(vocab, noise):
    """True entropy rate (nats/token) of `markov_tokens`: the floor of validation log perplexity."""
    follow = 1.0 - noise + noise / vocab
    other = noise / vocab
    return -follow * math.log(follow) - (vocab - 1) * other * math.log(other) if noise else 0.0


def markov_cycle(vocab, seed):
    """The chain's successor order: token cycle[i] is followed by cycle[(i + 1) % vocab]."""
    return np.random.default_rng([seed, 0]).permutation(vocab)


def markov_tokens(count, vocab, noise, seed, stream):
    """`count` tokens of the chain: each token is its predecessor's successor on a fixed random
    cycle through the vocabulary, except that with probability `noise` it is drawn uniformly."""
    cycle = markov_cycle(vocab, seed)
    place = np.argsort(cycle)
    rng = np.random.default_rng([seed, stream])
    jumps = rng.random(count) < noise
    jumps[0] = True
    jump_at = np.flatnonzero(jumps)
    jump_to = rng.integers(0, vocab, jump_at.size)
    segment = np.cumsum(jumps) - 1
    steps = np.arange(count) - jump_at[segment]
    return cycle[(place[jump_to[segment]] + steps) % vocab]


def build_markov_c4(folder, vocab=256, seq_len=8192, train_samples=512,
                    validation_samples=1024, noise=0.05, seed=0):
    """Write the Markov dataset as C4-named files; returns (train_prefix, validation_prefix).

    Each split holds `*_samples` documents of `seq_len + 1` tokens, so a TokenDataset with this
    `seq_len` finds at least that many samples. Train and validation share the chain (the same
    cycle) but not the random draws. Generated data, not a benchmark.
    """
    if not 2 <= vocab <= 2**31 - 1:
        raise ValueError(f"vocab {vocab} out of range")
    manifest = {"kind": "markov", "vocab": vocab, "seq_len": seq_len,
                "train_samples": train_samples, "validation_samples": validation_samples,
                "noise": noise, "seed": seed}
    if _cached(folder, manifest):
        return _prefixes(folder)
    _start_build(folder)
    dtype = np.uint16 if vocab <= 65500 else np.int32
    splits = zip(_prefixes(folder), (train_samples, validation_samples))
    for stream, (prefix, samples) in enumerate(splits, start=1):
        tokens = markov_tokens(samples * (seq_len + 1), vocab, noise, seed, stream)
        with IndexedWriter(prefix, dtype) as writer:
            for document in tokens.reshape(samples, seq_len + 1):
                writer.add_document(document)
    _write_manifest(folder, manifest)
    return _prefixes(folder)
