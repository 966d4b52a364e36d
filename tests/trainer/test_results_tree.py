"""The submission tree: numbered result files and a system description the checker accepts."""

import json
import os

from mlperf_logging.system_desc_checker.system_desc_checker import check_system_desc

from trainer import results
from trainer.config import load_config

RECIPE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def recipe(name):
    return load_config(os.path.join(RECIPE_DIR, f"{name}.yaml"))


def test_results_are_numbered_in_the_package_layout(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(":::MLLOG {}\n")
    root = tmp_path / "submission"
    folder = root / "results" / "8xH200" / "llama31_8b"
    assert results.result_folder(recipe("llama31_8b"), str(root)) == str(folder)
    paths = [results.write_result(str(log), str(folder)) for _ in range(3)]
    assert paths == [str(folder / f"result_{i}.txt") for i in range(3)]
    assert all(open(p).read() == ":::MLLOG {}\n" for p in paths)
    os.remove(paths[1])
    assert results.write_result(str(log), str(folder)) == paths[1]


def test_default_root():
    assert results.default_root(recipe("resnet")) == os.path.join("results", "trainer")
    assert results.default_root(recipe("llama_tiny")) == os.path.join("results", "smoke")


def test_smoke_tests_stay_out_of_the_submission_tree(tmp_path):
    """llama_tiny and resnet_tiny file their logs beside, never inside, results/<system>/<benchmark>, and write
    no system description: a submission folder given as --results is left as it was."""
    log = tmp_path / "run.log"
    log.write_text(":::MLLOG {}\n")
    for name in ("llama_tiny", "resnet_tiny"):
        path = results.record_run(recipe(name), str(log), str(tmp_path / "sub"))
        assert path == str(tmp_path / "sub" / name / "result_0.txt")
    assert sorted(os.listdir(tmp_path / "sub")) == ["llama_tiny", "resnet_tiny"]


def test_a_benchmark_run_keeps_its_log_with_a_record_for_the_submit_command(tmp_path):
    """A finished benchmark run files no result itself (trainer.submit chooses them): its log gets a record beside it,
    and the system description names the accelerators and the nodes."""
    log = tmp_path / "logs" / "run.log"
    os.makedirs(log.parent)
    log.write_text(":::MLLOG {}\n")
    path = results.record_run(recipe("llama31_8b"), str(log), str(tmp_path), ("NVIDIA H200", 8), nodes=2)
    assert path == str(log) and not os.path.exists(tmp_path / "results")
    record = json.loads((tmp_path / "logs" / "run.log.json").read_text())
    assert record["benchmark"] == "llama31_8b" and record["system"] == "8xH200" and record["ruleset"] == "6.1.0"
    assert len(record["source_digest"]) == 64
    desc = json.loads((tmp_path / "systems" / "8xH200.json").read_text())
    assert desc["accelerator_model_name"] == "NVIDIA H200" and desc["accelerators_per_node"] == "8" and desc["number_of_nodes"] == "2"


def test_system_description_passes_checker(tmp_path):
    cfg = recipe("llama31_8b")
    path = results.write_system_description(
        str(tmp_path), cfg, "NVIDIA H200", 8, extra={"accelerator_memory_capacity": "141 GB"})
    assert path == str(tmp_path / "systems" / "8xH200.json")
    with open(path) as f:
        desc = json.load(f)
    assert desc["submitter"] == "trainer" and desc["status"] == "Available on-premise"
    assert desc["accelerators_per_node"] == "8" and desc["accelerator_model_name"] == "NVIDIA H200"
    assert desc["accelerator_memory_capacity"] == "141 GB"
    assert desc["framework"].startswith("trainer")
    assert "numpy" in desc["other_software_stack"] and desc["host_processor_model_name"]
    valid, name, _, _ = check_system_desc(path, "training", "6.1.0")
    assert valid and name == "8xH200"


def test_research_status_maps_to_rdi(tmp_path):
    desc = results.system_description(recipe("resnet_tiny"), "none", 0, str(tmp_path))
    assert desc["status"] == "Research, Development, or Internal (RDI)"
    assert desc["division"] == "open" and desc["accelerators_per_node"] == "0"


def test_cpu_facts_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    block = ("processor\t: {n}\nmodel name\t: Test CPU 9000\nphysical id\t: {s}\n"
             "core id\t\t: {c}\ncache size\t: 512 KB\n")
    info.write_text("\n".join(block.format(n=n, s=n // 4, c=n % 2) for n in range(8)))
    facts = results.cpu_facts(str(info))
    assert facts["model"] == "Test CPU 9000"
    assert facts["sockets"] == 2 and facts["cores"] == 4
    assert facts["cache"] == "512 KB"
