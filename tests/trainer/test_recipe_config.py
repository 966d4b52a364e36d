"""Recipe loading: every shipped recipe validates; bad recipes fail with one clear line."""

import glob
import os

import pytest
import yaml

from trainer.config import ConfigError, load_config, parse_config, validate_mesh

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "*.yaml")))
RECIPE_DIR = os.path.dirname(RECIPES[0])


def raw(name):
    with open(os.path.join(RECIPE_DIR, f"{name}.yaml")) as f:
        return yaml.safe_load(f)


def error(raw_recipe, overrides=()):
    with pytest.raises(ConfigError) as info:
        parse_config(raw_recipe, "test.yaml", overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_all_four_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert names == {"llama31_8b.yaml", "resnet.yaml", "llama_tiny.yaml", "resnet_tiny.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.recipe == path
    assert cfg.benchmark == os.path.basename(path)[:-5]


def test_llama31_8b_derived_values():
    cfg = load_config(os.path.join(RECIPE_DIR, "llama31_8b.yaml"))
    assert cfg.optimizer.eps == 1e-5 and cfg.optimizer.betas == (0.9, 0.95)
    assert cfg.schedule.warmup_steps == 16
    assert cfg.schedule.decay_steps == 1_200_000 - 16
    assert cfg.train.gradient_accumulation_steps == 1
    assert cfg.model.rope_scaling.factor == 8.0
    assert cfg.eval.interval_samples == 12288
    assert cfg.target_reached(3.29) and not cfg.target_reached(3.31)


def test_resnet_derived_values():
    cfg = load_config(os.path.join(RECIPE_DIR, "resnet.yaml"))
    assert cfg.model.blocks == (3, 4, 6, 3)
    assert cfg.steps_per_epoch == 392   # 1281167 // 3264: the loader drops the partial last batch
    assert cfg.target_reached(0.76) and not cfg.target_reached(0.75)
    tiny = load_config(os.path.join(RECIPE_DIR, "resnet_tiny.yaml"))
    assert tiny.schedule.decay_steps == 9 * 32   # the decay after the warmup epoch


def test_resnet_bn_span():
    """model.bn_span: batch norm over groups of that many samples; the batch-3264 RCP's 204 in resnet.yaml, the
    whole micro-batch when absent; it must divide the micro-batch."""
    from trainer.build import build_model
    assert load_config(os.path.join(RECIPE_DIR, "resnet.yaml")).model.bn_span == 204
    cfg = parse_config(raw("resnet_tiny"), "t.yaml", ["model.bn_span=16"])
    assert build_model(cfg, "CPU:0").layer1[0].bn2.span == 16
    assert parse_config(raw("resnet_tiny"), "t.yaml").model.bn_span is None
    assert error(raw("resnet_tiny"), ["model.bn_span=48"]) == "'model.bn_span' (48) must divide train.micro_batch_size (64)"
    assert error(raw("resnet_tiny"), ["model.bn_span=0"]) == "'model.bn_span' must be > 0, got 0"


def test_config_is_frozen():
    cfg = load_config(os.path.join(RECIPE_DIR, "llama_tiny.yaml"))
    with pytest.raises(AttributeError):
        cfg.train.seed = 3


def test_unknown_top_level_key_suggests():
    r = raw("llama_tiny")
    r["optimzer"] = r.pop("optimizer")
    assert error(r) == "unknown key 'optimzer' in recipe; did you mean 'optimizer'?"


def test_unknown_nested_key_suggests():
    r = raw("resnet_tiny")
    r["train"]["micro_batch"] = r["train"].pop("micro_batch_size")
    assert error(r) == "unknown key 'micro_batch' in train; did you mean 'micro_batch_size'?"


def test_unknown_key_without_close_match_lists_known_keys():
    r = raw("llama_tiny")
    r["mesh"]["zzz"] = 1
    assert error(r).startswith("unknown key 'zzz' in mesh (known keys: hosts, dp, tp, zero1, device")


def test_wrong_types():
    r = raw("llama_tiny")
    r["train"]["global_batch_size"] = "many"
    assert error(r) == "'train.global_batch_size' must be an integer, got 'many'"
    r = raw("llama_tiny")
    r["mesh"]["zero1"] = "yes"
    assert error(r) == "'mesh.zero1' must be true or false, got 'yes'"
    r = raw("llama_tiny")
    r["optimizer"]["betas"] = [0.9]
    assert "'optimizer.betas' must be a list of 2 values" in error(r)


def test_bad_choice_and_missing_key():
    r = raw("llama_tiny")
    r["mesh"]["device"] = "TPU"
    assert error(r) == "'mesh.device' must be one of 'CPU', 'CUDA', 'AMD', got 'TPU'"
    r = raw("llama_tiny")
    del r["model"]["dim"]
    assert error(r) == "missing required key 'model.dim'"
    r = raw("llama_tiny")
    del r["eval"]
    assert error(r) == "missing required key 'eval'"


def test_impossible_values():
    r = raw("llama_tiny")
    r["model"]["n_heads"] = 3
    assert "model.dim (128) must be divisible by model.n_heads (3)" in error(r)
    assert "'mesh.dp' must be > 0, got 0" in error(raw("llama_tiny"), ["mesh.dp=0"])
    assert "exceeds model.max_seq_len" in error(raw("llama_tiny"), ["data.seq_len=4096"])
    assert "warmup_samples" in error(raw("llama_tiny"), ["schedule.warmup_samples=64"])
    r = raw("llama_tiny")
    r["data"] = {"kind": "imagenet", "path": "x"}
    assert error(r) == "benchmark llama_tiny needs data.kind one of c4, bytes, synthetic_tokens, got 'imagenet'"


def test_batch_must_split_over_mesh():
    message = error(raw("llama_tiny"), ["mesh.dp=3"])
    assert message == ("train.global_batch_size (32) is not divisible by mesh.dp * "
                       "train.micro_batch_size (3 * 32 = 96)")
    message = error(raw("llama_tiny"), ["train.micro_batch_size=8", "train.gradient_accumulation_steps=2"])
    assert "must equal micro_batch_size * mesh.dp * gradient_accumulation_steps" in message
    cfg = parse_config(raw("llama_tiny"), "t.yaml", ["train.micro_batch_size=8"])
    assert cfg.train.gradient_accumulation_steps == 4


def test_validate_mesh():
    cfg = load_config(os.path.join(RECIPE_DIR, "llama31_8b.yaml"))
    validate_mesh(cfg, 8)
    with pytest.raises(ConfigError) as info:
        validate_mesh(cfg, 1)
    assert str(info.value) == "mesh dp=8 x tp=1 needs 8 CUDA devices, but only 1 are available"


def test_tensor_parallel_must_divide_heads():
    message = error(raw("llama_tiny"), ["mesh.tp=8"])
    assert message == "model.n_heads (4) must be divisible by mesh.tp (8)"


def test_set_overrides_parse_yaml_scalars():
    cfg = parse_config(raw("llama_tiny"), "t.yaml", [
        "optimizer.lr=1e-3", "mesh.zero1=true", "train.seed=7", "checkpoint.dir=/tmp/ck",
        "optimizer.betas=[0.8, 0.9]", "mlperf.system=box-2"])
    assert cfg.optimizer.lr == 1e-3 and isinstance(cfg.optimizer.lr, float)
    assert cfg.mesh.zero1 is True and cfg.train.seed == 7
    assert cfg.checkpoint.dir == "/tmp/ck"
    assert cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.mlperf.system == "box-2"


def test_set_override_errors():
    assert error(raw("llama_tiny"), ["optimizer.lr"]) == "override 'optimizer.lr' must look like key.sub=value"
    assert (error(raw("llama_tiny"), ["optimizer.lr.x=1"])
            == "override 'optimizer.lr.x=1': 'optimizer.lr' is not a section")
    assert error(raw("llama_tiny"), ["optimizer.lrr=1"]) == "unknown key 'lrr' in optimizer; did you mean 'lr'?"


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(str(bad))


BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))   # 10**9 values in nine lines


@pytest.mark.parametrize("name,content,message", [
    ("binary.yaml", b"\xff\xfe\x00\x01model: {}", "is not UTF-8 text (byte 0xff at offset 0)"),
    ("empty.yaml", b"", "is empty"),
    ("comments.yaml", b"# nothing but a comment\n", "is empty"),
    ("bomb.yaml", BOMB.encode(), "aliases expand into more than 100,000 values"),
    ("self.yaml", b"model: &m {dim: *m}\n", "an alias at line 1 refers to itself"),
    ("deep.yaml", b"model: " + b"[" * 300 + b"]" * 300 + b"\n", "nests deeper than 64 levels"),
    ("two.yaml", b"model: {}\n---\ndata: {}\n", "is not valid YAML at line 2"),
    ("nul.yaml", b"model: {dim: 1\x00}\n", "is not valid YAML"),
    ("folder.yaml", None, "cannot read recipe"),
    ("missing.yaml", "missing", "cannot read recipe"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(".yaml") else "")
def test_launcher_refuses_what_is_not_a_recipe_in_one_line(tmp_path, capsys, name, content, message):
    from trainer.cli import main
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err and "Traceback" not in err, err


def test_unreadable_recipe_is_one_line(tmp_path, capsys, monkeypatch):
    from trainer import recipe_file
    from trainer.cli import main
    def denied(path, mode="r"): raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(recipe_file, "open", denied, raising=False)    # root reads any file: refuse at the open itself
    assert main([os.path.join(RECIPE_DIR, "llama_tiny.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().endswith("llama_tiny.yaml: Permission denied")


def test_closed_division_keeps_rule_values():
    message = error(raw("llama31_8b"), ["optimizer.betas=[0.9, 0.99]"])
    assert message == ("closed-division llama31_8b: 'optimizer.betas' must be (0.9, 0.95), "
                       "got (0.9, 0.99) (or set mlperf.division: open)")
    parse_config(raw("llama31_8b"), "t.yaml", ["optimizer.betas=[0.9, 0.99]", "mlperf.division=open"])
    assert "0.0001 times a power of two" in error(raw("resnet"), ["optimizer.weight_decay=3e-5"])
    assert "LARS 'optimizer.eps' must be 0.0" in error(raw("resnet"), ["optimizer.eps=1e-8"])
