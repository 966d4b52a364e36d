"""The launcher on a C4 folder whose files are truncated or do not belong together: one line naming the file,
exit code 2, before any training (in-process, on tiny files written under the recipe's own names)."""
import os
import numpy as np
import pytest
from trainer.cli import main
from trainer.config import load_config
from trainer.data.indexed import write_indexed
from test_launch import ROOT, SHRUNK_LLAMA

RECIPE = os.path.join(ROOT, "recipes/llama31_8b.yaml")


def c4_folder(path):
  d = load_config(RECIPE, [a for a in SHRUNK_LLAMA if "=" in a] + [f"data.path={path}"]).data
  os.makedirs(path)
  prefixes = [os.path.join(path, p) for p in (*d.train_prefixes, d.validation_prefix)]
  for p in prefixes: write_indexed(p, [np.arange(100, dtype=np.int32) % 256] * 3)
  return prefixes


@pytest.mark.parametrize("damage,message", [("truncate .bin", "past the end"), ("truncate .idx", "truncated header"),
                                            ("append to .bin", "do not belong together")])
def test_damaged_c4_files_are_one_line(tmp_path, capsys, damage, message):
  prefix = c4_folder(str(tmp_path / "c4"))[-1]        # the validation file
  path = prefix + damage[-4:]
  data = open(path, "rb").read()
  with open(path, "wb") as f: f.write(data + b"\0" * 4 if damage.startswith("append") else data[:len(data) // 2 if damage.endswith("bin") else 20])
  rc = main([RECIPE, *SHRUNK_LLAMA, "--set", f"data.path={tmp_path}/c4", "--set", f"checkpoint.dir={tmp_path}/ck", "--results", str(tmp_path / "sub")])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("\n") == 1 and message in err and os.path.basename(path) in err and "Traceback" not in err, err
