"""--resume refuses, in one line naming the file and the mismatch and before the run starts, a folder that is not
a checkpoint, a checkpoint of another recipe or mesh, and one holding a tensor of the wrong shape or dtype.
The launcher runs in-process: one step of a shrunk llama_tiny writes the checkpoint the cases start from."""
import os
import numpy as np
import pytest
from trainer.checkpoint import CheckpointManager, TensorData
from trainer.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [os.path.join(ROOT, "recipes/llama_tiny.yaml"), "--set", "model.n_layers=1", "--set", "model.dim=64", "--set", "model.ffn_dim=128",
        "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=8", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(checkpoint folder, the arguments of the run that wrote it) after one step of training."""
  tmp = tmp_path_factory.mktemp("resume")
  args = TINY + ["--set", f"checkpoint.dir={tmp}/ck", "--set", "checkpoint.every_steps=1", "--results", str(tmp / "results")]
  assert main(args + ["--max-steps", "1"]) == 0
  return CheckpointManager(str(tmp / "ck")).latest().path, args


def refused(args, capsys, *fragments):
  assert main(args + ["--max-steps", "2"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  for f in fragments: assert f in err, err
  return err


def test_a_folder_that_is_not_a_checkpoint(trained, tmp_path, capsys):
  _, args = trained
  (tmp_path / "notes.txt").write_text("hello")
  refused(args + ["--resume", str(tmp_path)], capsys, str(tmp_path), "is not a checkpoint folder")
  refused(args + ["--resume", str(tmp_path / "nowhere")], capsys, "nowhere", "no such folder")


@pytest.mark.parametrize("change,what", [(["--set", "model.ffn_dim=192"], "model.ffn_dim is 128 there, 192 here"),
                                         (["--set", "mesh.tp=2"], "mesh.tp is 1 there, 2 here"),
                                         (["--set", "train.global_batch_size=16", "--set", "train.micro_batch_size=16"], "global_batch_size is 8 there, 16 here")])
def test_a_checkpoint_of_another_recipe_or_mesh(trained, capsys, change, what):
  path, args = trained
  refused(args + change + ["--resume", path], capsys, path, "written for another recipe or mesh", what)


def _rewrite(src, dst, edit):
  """A complete checkpoint at dst: src's state with its tensors changed by edit(dict)."""
  ck = CheckpointManager(src.rsplit("/", 1)[0]).load(src)
  tensors = ck.tensors()
  edit(tensors)
  return CheckpointManager(str(dst)).save(ck.step, tensors, ck.state).path


@pytest.mark.parametrize("edit,what", [
  (lambda t: t.update({"model.model.norm.weight": TensorData(np.ones(65, np.float32), "float32")}), "model.model.norm.weight has shape (65,), the run's is (64,)"),
  (lambda t: t.update({"model.lm_head.weight": TensorData(t["model.lm_head.weight"].array.astype(np.float16), "float16")}), "model.lm_head.weight has dtype float16, the run's is float32"),
  (lambda t: t.pop("model.lm_head.weight"), "missing tensor model.lm_head.weight"),
  (lambda t: t.update({"optim.extra": TensorData(np.zeros(3, np.float32), "float32")}), "unexpected tensor 'extra'"),
  (lambda t: t.update({"optim.step": TensorData(t["optim.step"].array.astype(np.float16), "float16")}), "optim.step has dtype float16, the run's is float32"),
])
def test_a_checkpoint_with_a_tensor_that_does_not_fit(trained, tmp_path, capsys, edit, what):
  path, args = trained
  bad = _rewrite(path, tmp_path / "ck", edit)
  refused(args + ["--resume", bad], capsys, os.path.join(bad, "tensors.safetensors"), what)
