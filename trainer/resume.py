"""Whether a checkpoint fits the run that resumes from it, checked before the run starts.

A checkpoint records what wrote it (`record(cfg)`: the benchmark, model, tensor parallelism, precision, global batch
and optimizer); `check_record` refuses one written for another recipe or mesh, naming what differs. The hosts and
data-parallel replicas may differ (with the same global batch: more accumulation on fewer hosts): the optimizer state
is resharded (parallel/data_parallel.py); tensor-parallel shards cannot be. `check_layout`
refuses tensors that are missing, unexpected, or of another shape or dtype than the run's own, and
`naming(path)` makes every such error name the checkpoint file. Each is one CheckpointError, which the
launcher prints as one line (exit code 2).
"""
from __future__ import annotations
import dataclasses, json
from contextlib import contextmanager
from .checkpoint import CheckpointError


def record(cfg) -> dict:
  """What must match for a run to continue from a checkpoint (JSON-able)."""
  mesh = cfg.mesh
  return json.loads(json.dumps({
    "benchmark": cfg.benchmark, "model": dataclasses.asdict(cfg.model), "mesh": {"tp": mesh.tp},
    "precision": dataclasses.asdict(cfg.train.precision), "global_batch_size": cfg.train.global_batch_size, "optimizer": cfg.optimizer.name}))


def _flat(d: dict, prefix="") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict): out.update(_flat(v, f"{prefix}{k}."))
    else: out[f"{prefix}{k}"] = v
  return out


def check_record(ck, cfg):
  """Refuse a checkpoint written for another recipe or mesh. Checkpoints written before the record existed
  carry none; their tensors are still checked by check_layout."""
  saved = ck.state.get("recipe")
  if saved is None: return
  there, here = _flat(saved), _flat(record(cfg))
  diff = [f"{k} is {there.get(k)!r} there, {here.get(k)!r} here" for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k)]
  if diff: raise CheckpointError(f"checkpoint {ck.path} was written for another recipe or mesh: " + "; ".join(diff[:4]) + ("; ..." if len(diff) > 4 else ""))


def check_layout(tensors: dict, own: dict, prefix: str):
  """The checkpoint's tensors under `prefix` are exactly `own`'s (name -> tensor), with their shapes and dtypes."""
  saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
  problems = [f"missing tensor {prefix}{n}" for n in own if n not in saved]
  problems += [f"unexpected tensor {prefix}{n}" for n in saved if n not in own]
  for n, t in own.items():
    if n not in saved: continue
    if tuple(saved[n].shape) != tuple(t.shape): problems.append(f"{prefix}{n} has shape {tuple(saved[n].shape)}, the run's is {tuple(t.shape)}")
    if saved[n].dtype != t.dtype.name: problems.append(f"{prefix}{n} has dtype {saved[n].dtype}, the run's is {t.dtype.name}")
  if problems: raise CheckpointError("; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""))


@contextmanager
def naming(path):
  """Re-raise a CheckpointError from the block as one that starts with the checkpoint file's path."""
  try:
    yield
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
