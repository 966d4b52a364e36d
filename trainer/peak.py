"""The dense peak FLOP rate of the device a run trains on, the denominator of the model FLOP utilisation (MFU) the
progress bar shows. GPUs by the model name their runtime reports, from the vendors' datasheets; the CPU from its
cores, clock and the vector width of the instruction set the CPU backend compiles for (-march=native). A device
not in the table gets no MFU rather than a guess.
"""
from __future__ import annotations
import re

TFLOPS = 1e12
# (name as the runtime reports it, matched as a substring, most specific first): (16-bit dense, float32 dense) in
# TFLOP/s, and where the figures come from. "Dense": the datasheets' headline tensor figures are with 2:4 sparsity,
# twice these. float32 is the vector (non-tensor) rate: our float32 matrix products do not use TF32.
GPU_PEAKS = (
  ("H100 NVL", 835.0, 60.0, "NVIDIA H100 datasheet (NVL: 1,671 sparse bf16 / 2, fp32 60)"),
  ("H100 PCIe", 756.0, 51.0, "NVIDIA H100 datasheet (PCIe: 1,513 sparse bf16 / 2, fp32 51)"),
  ("H100", 989.4, 67.0, "NVIDIA H100 datasheet and Hopper whitepaper (SXM5: 989.4 dense bf16, fp32 67)"),
  ("H200 NVL", 835.0, 60.0, "NVIDIA H200 product page (NVL: 1,671 sparse bf16 / 2, fp32 60)"),
  ("H200", 989.4, 67.0, "NVIDIA H200 product page (SXM: the H100 SXM's compute, 1,979 sparse bf16 / 2, fp32 67)"),
  ("B200", 2250.0, 75.0, "NVIDIA HGX B200 specifications (4.5 PF sparse bf16 / 2, fp32 75)"),
  ("A100", 312.0, 19.5, "NVIDIA A100 datasheet (SXM and PCIe: 312 dense bf16, fp32 19.5)"),
  ("MI300X", 1307.4, 163.4, "AMD ROCm docs, MI300X peak-performance table (matrix FP16/BF16 1307.4, vector FP32 163.4)"),
  ("MI325X", 1307.4, 163.4, "AMD Instinct MI325X specifications (the MI300X's CDNA3 compute: 304 CUs at 2.1 GHz)"),
  ("MI350X", 2300.0, 144.2, "AMD Instinct MI350X specifications (2.3 PF dense FP16/BF16, FP32 144.2)"),
  ("MI355X", 2516.6, 157.3, "AMD Instinct MI355X specifications (2.5 PF dense FP16/BF16, FP32 157.3)"),
  ("7900 XTX", 122.8, 61.4, "AMD Radeon RX 7900 XTX specifications (FP16 122.8 with WMMA, FP32 61.4 dual-issue)"),
)


def gpu_peak(model_name: str, dtype: str) -> float | None:
  """FLOP/s of one GPU named `model_name` (e.g. 'NVIDIA H200') computing in `dtype`; None if not in the table."""
  for key, half, single, _ in GPU_PEAKS:
    if key.lower() in model_name.lower(): return (single if dtype == "float32" else half) * TFLOPS
  return None


def cpu_peak(cpuinfo_path: str = "/proc/cpuinfo", max_freq_path: str = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") -> float | None:
  """float32 FLOP/s of this host's CPU: physical cores x the highest clock reported x the FLOPs a core can issue per
  cycle with the widest vector FMA it has (2 FMA pipes x 2 FLOPs x lanes: 16 with AVX-512, 8 with AVX2 and FMA,
  else 4). An upper bound, so the MFU it gives is never above the truth; None if cpuinfo cannot be read.
  The CPU backend computes bfloat16 and float16 in float32, so this is the peak for every dtype."""
  try:
    with open(cpuinfo_path) as f: blocks = [b for b in f.read().split("\n\n") if b.strip()]
  except OSError: return None
  procs = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in b.splitlines()) if _) for b in blocks]
  if not procs: return None
  cores = len({(p.get("physical id"), p.get("core id")) for p in procs if "core id" in p}) or len(procs)
  mhz = max((float(p["cpu MHz"]) for p in procs if re.fullmatch(r"[0-9.]+", p.get("cpu MHz", ""))), default=0.0)
  try:
    with open(max_freq_path) as f: mhz = max(mhz, int(f.read()) / 1e3)
  except (OSError, ValueError): pass
  if mhz <= 0: return None
  flags = set(procs[0].get("flags", procs[0].get("Features", "")).split())
  lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
  return cores * mhz * 1e6 * 2 * 2 * lanes


def mesh_peak(backend: str, model_name: str, n_devices: int, dtype: str) -> float | None:
  """The peak of the devices a mesh trains on: n GPUs, or the host's CPU once (CPU devices share its cores)."""
  if backend == "CPU": return cpu_peak()
  one = gpu_peak(model_name, dtype)
  return one * n_devices if one else None

