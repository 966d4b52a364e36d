"""The MLPerf submission tree that runs write their results into.

Layout under a submission folder `root` (the layout `mlperf_logging.package_checker` reads):

    root/results/<system>/<benchmark>/result_<i>.txt   one MLPerf log per run, i = 0, 1, ...
    root/systems/<system>.json                         the system description

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


def record_run(cfg, log_path, root):
    """File a finished run: its log as the next result_<i>.txt of result_folder(cfg, root) and, for a
    benchmark, the system description (accelerators from cfg.mesh; none on the CPU). The result's path."""
    path = write_result(log_path, result_folder(cfg, root))
    if is_benchmark(cfg):
        cpu = cfg.mesh.device == "CPU"
        write_system_description(root, cfg, "" if cpu else cfg.mesh.device, 0 if cpu else cfg.mesh.dp * cfg.mesh.tp)
    return path


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


def write_system_description(root, cfg, accelerator_model, accelerator_count, extra=None):
    """Write root/systems/<system>.json for cfg's mlperf section and this host; its path."""
    folder = os.path.join(root, "systems")
    os.makedirs(folder, exist_ok=True)
    desc = system_description(cfg, accelerator_model, accelerator_count, root)
    desc.update(extra or {})
    path = os.path.join(folder, f"{cfg.mlperf.system}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(desc, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


def system_description(cfg, accelerator_model, accelerator_count, storage_path="."):
    """The system description fields, from cfg.mlperf, the caller's accelerators and the host
    (storage capacity is that of the file system holding storage_path)."""
    m = cfg.mlperf
    cpu = cpu_facts()
    desc = {
        "submitter": m.submission_org,
        "division": m.division,
        "status": _AVAILABILITY[m.status],
        "system_name": m.system,
        "number_of_nodes": "1",
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
