"""MLPerfLogger: simulated runs produce logs that the official compliance checker accepts."""

import json
import os
import subprocess
import sys

from trainer.config import load_config
from trainer.mlperf_log import MLPerfLogger, ruleset

RECIPE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def recipe(name):
    return load_config(os.path.join(RECIPE_DIR, f"{name}.yaml"))


def simulate(cfg, path, values, echo=False):
    """Drive the logger the way the training loop does; one evaluation per value."""
    log = MLPerfLogger(cfg, str(path), echo=echo)
    log.init_start(cache_cleared=True)
    log.hyperparameters()
    log.init_stop()
    log.run_start()
    p = cfg.train.precision   # the loop logs what its first step ran in; here, the recipe's types
    log.precision(p.compute_dtype, p.compute_dtype, p.comm_dtype)
    position, success = 0, False
    for value in values:
        log.block_start(position)
        position = next_eval(cfg, position)
        log.block_stop(position)
        log.eval_start(position)
        log.eval_stop(position, value)
        success = cfg.target_reached(value)
        if success:
            break
    samples = position if cfg.family == "llama" else position * cfg.data.train_size
    log.run_stop(success, samples)
    log.close()
    return position


def next_eval(cfg, position):
    if cfg.family == "llama":
        return position + cfg.eval.interval_samples
    first = cfg.eval.offset_epochs or cfg.eval.interval_epochs
    return first if position < first else position + cfg.eval.interval_epochs


def check(path, rules, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
         "--ruleset", rules, "--werror", "--log_output", str(tmp_path / "checker.log"), str(path)],
        capture_output=True, text=True, timeout=60)
    return (out.stdout + out.stderr).strip()


def records(path):
    with open(path) as f:
        return [json.loads(line.split(" ", 1)[1]) for line in f if line.startswith(":::MLLOG")]


def test_rulesets():
    assert ruleset(recipe("llama31_8b")) == "6.1.0"
    assert ruleset(recipe("resnet")) == "4.0.0"


def test_llama31_8b_log_passes_checker(tmp_path):
    path = tmp_path / "llama.log"
    simulate(recipe("llama31_8b"), path, [7.5, 4.2, 3.6, 3.31, 3.29])
    assert check(path, "6.1.0", tmp_path).endswith("SUCCESS")
    logged = {r["key"]: r for r in records(path)}
    assert logged["opt_learning_rate_decay_steps"]["value"] == 1_200_000 - 16
    assert logged["lowest_numerical_precision_in_linear"]["value"] == "bfloat16"
    assert logged["config_filename"]["value"] == "llama31_8b.yaml"
    assert logged["run_stop"]["metadata"]["status"] == "success"
    assert logged["train_samples"]["value"] == 5 * 12288
    assert all(r["metadata"]["file"].endswith("mlperf_log.py") for r in records(path))


def test_llama31_8b_log_without_target_fails_checker(tmp_path):
    path = tmp_path / "llama.log"
    simulate(recipe("llama31_8b"), path, [7.5, 4.2, 3.6])
    assert not check(path, "6.1.0", tmp_path).endswith("SUCCESS")
    assert {r["key"]: r for r in records(path)}["run_stop"]["metadata"]["status"] == "aborted"


def test_resnet_log_passes_checker(tmp_path):
    path = tmp_path / "resnet.log"
    simulate(recipe("resnet"), path, [0.2, 0.5, 0.7, 0.76])
    assert check(path, "4.0.0", tmp_path).endswith("SUCCESS")
    blocks = [r["metadata"] for r in records(path) if r["key"] == "block_start"]
    assert [(b["first_epoch_num"], b["epoch_count"]) for b in blocks] == [(1, 2), (3, 4), (7, 4), (11, 4)]
    evals = [r for r in records(path) if r["key"] == "eval_accuracy"]
    assert [e["metadata"]["epoch_num"] for e in evals] == [2, 6, 10, 14]
    logged = {r["key"]: r["value"] for r in records(path)}
    assert logged["lars_opt_base_learning_rate"] == 10.5
    assert logged["lars_opt_learning_rate_decay_steps"] == 14523
    assert logged["model_bn_span"] == 204   # the RCP's (resnet_ref_3264), logged as the reference logs it


def test_tiny_recipes_log_the_full_sequence(tmp_path, capsys):
    for name, values in (("llama_tiny", [3.0, 1.5]), ("resnet_tiny", [0.5, 0.95])):
        path = tmp_path / f"{name}.log"
        simulate(recipe(name), path, values, echo=True)
        keys = [r["key"] for r in records(path)]
        assert keys[:2] == ["cache_clear", "init_start"]
        assert keys.index("init_stop") < keys.index("run_start") < keys.index("run_stop")
        assert keys.count("eval_accuracy") == 2
    assert capsys.readouterr().out.count(":::MLLOG") > 40
