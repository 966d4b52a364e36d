"""The MLPerf submission tree that runs write their results into.

Layout under a submission folder `root` (the layout `mlperf_logging.package_checker` reads):

    root/logs/<run>.log, <run>.log.json                 every run's MLPerf log, and for a finished benchmark run its
                                                        record (benchmark, system, ruleset, the code's digest)
    root/systems/<system>.json                         the system description, rewritten by each finished run
    root/results/<system>/<benchmark>/result_<i>.txt   the runs to submit, chosen by `python -m trainer.submit root`
    root/benchmarks/<benchmark>/implementations/<name>/  the code that ran them (the same command)

`default_root(cfg)` is results/<submission_org>. The CPU recipes llama_tiny and resnet_tiny are smoke
tests of the system, not benchmark results: their logs go to root/<recipe's benchmark>/result_<i>.txt
(default root results/smoke), outside any results/ tree, so they never land in a submission's
benchmark folder and the package checker never sees them. The system description holds every field the
training system_desc_checker requires; what this module can read off the host (CPU, memory,
disk, OS, software versions) is filled in, the accelerator model and count come from the
caller, and facts nobody measured (interconnects, cooling) stay empty strings unless the
caller passes them in `extra`. Counts are written as strings, as the checker expects.
"""

import importlib.metadata
import json
import os
import platform
import shutil

_AVAILABILITY = {
    "onprem": "Available on-premise",
    "cloud": "Available cloud",
    "research": "Research, Development, or Internal (RDI)",
}
_UNMEASURED = (
    "host_processor_interconnect", "host_storage_type", "host_networking",
    "host_networking_topology", "host_memory_configuration", "accelerator_host_interconnect",
    "accelerator_frequency", "accelerator_on-chip_memories", "accelerator_memory_configuration",
    "accelerator_memory_capacity", "accelerator_interconnect", "accelerator_interconnect_topology",
    "cooling", "hw_notes", "sw_notes",
)


def is_benchmark(cfg):
    """Whether cfg runs an MLPerf benchmark (llama31_8b, resnet); the tiny recipes are smoke tests."""
    return cfg.benchmark == cfg.mlperf_benchmark


def default_root(cfg):
    """The folder a run writes into: the submission folder results/<submission_org> for a benchmark,
    results/smoke for a smoke test."""
    return os.path.join("results", cfg.mlperf.submission_org if is_benchmark(cfg) else "smoke")


def result_folder(cfg, root):
    """root/results/<system>/<benchmark> for a benchmark, root/<benchmark> (e.g. llama_tiny) for a smoke test."""
    if is_benchmark(cfg):
        return os.path.join(root, "results", cfg.mlperf.system, cfg.mlperf_benchmark)
    return os.path.join(root, cfg.benchmark)


def record_run(cfg, log_path, root, accelerator=("", 0), nodes=1):
    """File a finished run. A smoke test's log becomes the next result_<i>.txt of result_folder(cfg, root) (its path
    is returned). A benchmark run's log stays in logs/ with its record beside it (what `python -m trainer.submit`
    chooses from), and the system description is written: `accelerator` is (model name, count per node) as
    `accelerators` reads them, `nodes` the number of hosts. Returns the log's path."""
    if not is_benchmark(cfg):
        return write_result(log_path, result_folder(cfg, root))
    write_run_record(cfg, log_path)
    write_system_description(root, cfg, *accelerator, nodes=nodes)
    return log_path


def accelerators(cfg):
    """(model name, count) of the accelerators a host's mesh uses, the name as the runtime reports it
    ('NVIDIA H200'); ('', 0) on the CPU, which the description lists as the host processor."""
    if cfg.mesh.device == "CPU":
        return "", 0
    from .core.device import get_runtime
    return get_runtime(f"{cfg.mesh.device}:0").device_name or cfg.mesh.device, cfg.mesh.dp * cfg.mesh.tp


def write_run_record(cfg, log_path):
    """<log>.json beside a benchmark run's log: what trainer.submit needs to choose it and to file its code."""
    from .mlperf_log import ruleset
    from .source import source_digest
    record = {"benchmark": cfg.mlperf_benchmark, "system": cfg.mlperf.system, "ruleset": ruleset(cfg),
              "source_digest": source_digest(), "recipe": cfg.recipe, **_git_commit()}
    with open(log_path + ".json.tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(log_path + ".json.tmp", log_path + ".json")


def _git_commit():
    """{'commit': HEAD, 'dirty': uncommitted changes?} of the project's git checkout, {} outside one."""
    import subprocess
    from .source import project_root
    try:
        run = lambda *a: subprocess.run(["git", "-C", project_root(), *a], capture_output=True, text=True, timeout=30)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        return {"commit": head.stdout.strip(), "dirty": bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def write_result(log_path, folder):
    """Copy a run's MLPerf log to the next free result_<i>.txt of `folder`; its path."""
    os.makedirs(folder, exist_ok=True)
    with open(log_path, "rb") as src:
        for i in range(10_000):
            path = os.path.join(folder, f"result_{i}.txt")
            try:
                dst = open(path, "xb")
            except FileExistsError:
                continue
            with dst:
                shutil.copyfileobj(src, dst)
            return path
    raise RuntimeError(f"no free result_<i>.txt name in {folder}")


def write_system_description(root, cfg, accelerator_model, accelerator_count, extra=None, nodes=1):
    """Write root/systems/<system>.json for cfg's mlperf section and this host; its path."""
    folder = os.path.join(root, "systems")
    os.makedirs(folder, exist_ok=True)
    desc = system_description(cfg, accelerator_model, accelerator_count, root, nodes)
    desc.update(extra or {})
    path = os.path.join(folder, f"{cfg.mlperf.system}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(desc, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def system_description(cfg, accelerator_model, accelerator_count, storage_path=".", nodes=1):
    """The system description fields, from cfg.mlperf, the caller's accelerators (per node) and the host
    (storage capacity is that of the file system holding storage_path)."""
    m = cfg.mlperf
    cpu = cpu_facts()
    desc = {
        "submitter": m.submission_org,
        "division": m.division,
        "status": _AVAILABILITY[m.status],
        "system_name": m.system,
        "number_of_nodes": str(nodes),
        "host_processors_per_node": str(cpu["sockets"]),
        "host_processor_model_name": cpu["model"],
        "host_processor_core_count": str(cpu["cores"]),
        "host_processor_vcpu_count": str(cpu["vcpus"]),
        "host_processor_frequency": cpu["frequency"],
        "host_processor_caches": cpu["cache"],
        "host_memory_capacity": _memory_capacity(),
        "host_storage_capacity": _gb(shutil.disk_usage(storage_path).total),
        "accelerators_per_node": str(accelerator_count),
        "accelerator_model_name": accelerator_model,
        "framework": f"trainer {_version('trainer')}".strip(),
        "other_software_stack": ", ".join(
            [f"python {platform.python_version()}"]
            + [f"{name} {_version(name)}" for name in ("numpy", "mlperf-logging", "pyyaml")]),
        "operating_system": _operating_system(),
    }
    desc.update({key: "" for key in _UNMEASURED})
    return desc


def cpu_facts(cpuinfo_path="/proc/cpuinfo"):
    """CPU model, sockets, physical cores, logical CPUs, frequency and cache of this host."""
    try:
        with open(cpuinfo_path) as f:
            blocks = [b for b in f.read().split("\n\n") if b.strip()]
    except OSError:
        blocks = []
    procs = [dict(_field(line) for line in b.splitlines() if ":" in line) for b in blocks]
    vcpus = os.cpu_count() or len(procs) or 1
    first = procs[0] if procs else {}
    sockets = len({p.get("physical id") for p in procs if "physical id" in p}) or 1
    cores = len({(p.get("physical id"), p.get("core id")) for p in procs if "core id" in p}) or vcpus
    return {
        "model": first.get("model name") or platform.processor() or platform.machine(),
        "sockets": sockets,
        "cores": cores,
        "vcpus": vcpus,
        "frequency": _cpu_frequency(first),
        "cache": first.get("cache size", ""),
    }


def _field(line):
    key, _, value = line.partition(":")
    return key.strip(), value.strip()


def _cpu_frequency(proc):
    """The maximum CPU clock from cpufreq when the kernel exposes it, else /proc/cpuinfo's."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return f"{int(f.read()) / 1e6:.2f} GHz"
    except (OSError, ValueError):
        mhz = proc.get("cpu MHz")
        return f"{float(mhz) / 1e3:.2f} GHz" if mhz else ""


def _memory_capacity():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return _gb(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return ""


def _operating_system():
    try:
        with open("/etc/os-release") as f:
            names = dict(_field(line.replace("=", ":", 1)) for line in f if "=" in line)
        name = names.get("PRETTY_NAME", "").strip('"')
    except OSError:
        name = ""
    return f"{name or platform.system()}, kernel {platform.release()}"


def _gb(n_bytes):
    return f"{n_bytes / 2**30:.0f} GB"


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""
