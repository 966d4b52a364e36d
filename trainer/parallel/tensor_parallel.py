"""Tensor parallelism (Megatron style) by sharding a model's tensors over a device group.

`shard_model(model, devices, plan)` replaces every tensor of the model by a Sharded one: split along
the axis the plan names for it (matched on the end of its dotted name), replicated otherwise. The
model's own forward code then runs unchanged on Sharded tensors (sharded.py inserts the collectives).
For Llama (LLAMA_PLAN): q/k/v and gate/up projections split by output features (column parallel),
o/down projections by input features (row parallel, one all-reduce each in forward and backward),
the embedding and the output layer by vocabulary rows (vocabulary-parallel lookup and cross entropy).
"""
from __future__ import annotations
from ..core import Tensor
from ..nn.module import Module, materialize
from .collectives import all_reduce
from .sharded import Sharded

LLAMA_PLAN = {"embed_tokens.weight": 0, "q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0, "gate_proj.weight": 0,
              "up_proj.weight": 0, "o_proj.weight": 1, "down_proj.weight": 1, "lm_head.weight": 0}


def _axis(name: str, plan: dict):
  return next((a for suffix, a in plan.items() if name == suffix or name.endswith("." + suffix)), None)


def shard_model(model: Module, devices: list[str], plan: dict, built: list[Module] | None = None) -> Module:
  """Shard `model` in place over `devices` (the tensor-parallel group) and return it. `built`: the same
  model built on each device under nn.module.deferred_init (model is built[0]); each shard is then cut
  from its own device's lazy initialisation and computed there, so no device computes or holds a whole
  split tensor. Without it, the shards of model's tensors are copied to their devices."""
  mods = [dict(b.named_modules()) for b in built] if built else None
  for mname, m in model.named_modules():
    for k, v in list(m.__dict__.items()):
      if not isinstance(v, Tensor): continue
      name = f"{mname}.{k}" if mname else k
      axis = _axis(name, plan)
      local = [getattr(ms[mname], k) for ms in mods] if mods else None
      s = Sharded.split(v, devices, axis, local) if axis is not None else Sharded.replicate(v, devices, local)
      rg = v.requires_grad
      s.shards = [materialize(t, requires_grad=rg) for t in s.shards]
      setattr(m, k, s)
  return model


def param_groups(model: Module) -> tuple[list[list[Tensor]], list[bool]]:
  """Per device of the group, the parameter tensors it holds (same order on every device), and for
  each position whether the parameter is replicated. An unsharded model is one group."""
  ps = model.parameters()
  if not ps or not isinstance(ps[0], Sharded): return [ps], [False] * len(ps)
  return [[p.shards[r] for p in ps] for r in range(ps[0].n)], [p.axis is None for p in ps]


def sync_replicated_grads(model: Module):
  """A replicated parameter's copies got the gradients of their own device's uses: give each the sum."""
  for p in model.parameters():
    if isinstance(p, Sharded) and p.axis is None and p.shards[0].grad is not None:
      for s, g in zip(p.shards, all_reduce([s.grad for s in p.shards], "sum")): s.grad = g
