"""launch.py as several hosts (mpirun processes on this machine, traffic on loopback): the same run as one host,
the MLPerf log written once, faults that end the whole job and the runs that resume after them, checkpoints that
move between host counts, and bad input agreed on by every host."""
import json, os, subprocess, sys, time
import numpy as np
import pytest
from mpi import mpirun, ROOT

LAUNCH = os.path.join(ROOT, "launch.py")
TINY = [os.path.join(ROOT, "recipes/llama_tiny.yaml"), "--set", "model.n_layers=1", "--set", "model.dim=32", "--set", "model.ffn_dim=64",
        "--set", "data.seq_len=32", "--set", "model.max_seq_len=32", "--set", "eval.samples=8",
        "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=2", "--no-progress", "--print-losses"]
TOLERANCE = dict(rtol=2e-6)   # the gradient sums run in another order (ring inside a host, MPI across): float32 rounding


def losses(stdout: str) -> dict[int, float]:
  return {int(l.split()[1]): float(l.split()[-1]) for l in stdout.splitlines() if l.startswith("step ")}


def one_host(tmp_path, args, name):
  r = subprocess.run([sys.executable, LAUNCH, *TINY, *args, "--set", f"checkpoint.dir={tmp_path}/{name}", "--results", str(tmp_path / "r")],
                     cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def hosts(tmp_path, n, args, name, **kw):
  return mpirun(n, [LAUNCH, *TINY, *args, "--set", f"mesh.hosts={n}", "--set", f"checkpoint.dir={tmp_path}/{name}", "--results", str(tmp_path / "r")],
                tmp_path, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One host with 4 data-parallel devices, 6 steps: the losses every mesh below must give."""
  tmp = tmp_path_factory.mktemp("one")
  return losses(one_host(tmp, ["--set", "mesh.dp=4", "--max-steps", "6"], "ck").stdout)


@pytest.mark.parametrize("n,mesh", [(2, ["mesh.dp=2"]), (2, ["mesh.dp=2", "mesh.zero1=true"]), (2, ["mesh.dp=1", "mesh.tp=2"]), (4, ["mesh.dp=1"])],
                         ids=["2x2", "2x2-zero1", "2x(1x2 tp)", "4x1"])
def test_hosts_give_the_losses_of_one_host(tmp_path, reference, n, mesh):
  r = hosts(tmp_path, n, [a for kv in mesh for a in ("--set", kv)] + ["--max-steps", "4"], "ck", transport="tcp" if n == 2 else "sm")
  assert r.returncode == 0, r.stderr[-3000:]
  got = losses(r.stdout)
  assert sorted(got) == [1, 2, 3, 4]                                     # host 0 alone prints
  np.testing.assert_allclose([got[s] for s in got], [reference[s] for s in got], **TOLERANCE)


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
  """2 hosts x dp 2 with ZeRO-1, checkpoints every 2 steps, 6 steps: the uninterrupted run."""
  tmp = tmp_path_factory.mktemp("two")
  r = hosts(tmp, 2, ["--set", "mesh.dp=2", "--set", "mesh.zero1=true", "--set", "checkpoint.every_steps=2", "--max-steps", "6"], "ck")
  assert r.returncode == 0, r.stderr[-3000:]
  return tmp, losses(r.stdout)


@pytest.mark.parametrize("kind,code", [("raise", 1), ("oom", 3), ("kill", None), ("hang", 1)])
def test_a_fault_on_one_host_ends_the_job_and_resume_continues_the_run(tmp_path, two_hosts, kind, code):
  _, full = two_hosts
  args = ["--set", "mesh.dp=2", "--set", "mesh.zero1=true", "--set", "checkpoint.every_steps=2", "--set", "mesh.timeout_s=4", "--max-steps", "6"]
  t = time.monotonic()
  r = hosts(tmp_path, 2, args, "ck", timeout=120, env={"TRAINER_FAULT": f"1:4:{kind}"})
  # a killed host: the launcher ends the job, with its own code (137 when it notices the kill, 14 when a peer first
  # finds the connection gone) and its own message
  assert time.monotonic() - t < 30 and (r.returncode == code if code else r.returncode != 0), (r.returncode, r.stderr[-3000:])
  ours = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert "Traceback" not in r.stderr and len(ours) == (0 if kind == "kill" else 1), r.stderr[-3000:]
  if kind != "kill":
    assert ours[0].endswith("(host 1 of 2)" if kind != "hang" else "(host 0 of 2)") and \
      {"raise": "injected fault", "oom": "out of memory", "hang": "step 4 did not finish"}[kind] in ours[0], ours
  else: assert "signal 9" in r.stderr or "disconnected" in r.stderr, r.stderr[-3000:]
  assert {s: full[s] for s in (1, 2, 3)} == losses(r.stdout)            # the steps before the fault
  if kind == "oom": return
  again = hosts(tmp_path, 2, args + ["--resume", "auto"], "ck")
  assert again.returncode == 0, again.stderr[-3000:]
  assert losses(again.stdout) == {s: full[s] for s in (3, 4, 5, 6)}     # from the step-2 checkpoint: the same run


@pytest.mark.parametrize("mesh", [["mesh.dp=4", "mesh.zero1=true"], ["mesh.dp=2", "mesh.zero1=true"], ["mesh.dp=1"]],
                         ids=["1x4-zero1", "1x2-zero1-accumulating", "1x1"])
def test_a_two_host_checkpoint_continues_on_one_host(tmp_path, two_hosts, mesh):
  import shutil
  tmp, full = two_hosts
  shutil.copytree(tmp / "ck", tmp_path / "ck")
  shutil.rmtree(tmp_path / "ck" / "step_00000006")   # the newest left is step 4's
  got = losses(one_host(tmp_path, [a for kv in mesh for a in ("--set", kv)] + ["--max-steps", "6", "--resume", "auto"], "ck").stdout)
  assert sorted(got) == [5, 6]
  np.testing.assert_allclose([got[5], got[6]], [full[5], full[6]], **TOLERANCE)


def test_a_one_host_checkpoint_continues_on_two_hosts(tmp_path, reference):
  one_host(tmp_path, ["--set", "mesh.dp=2", "--set", "mesh.zero1=true", "--set", "checkpoint.every_steps=2", "--max-steps", "2"], "ck")
  r = hosts(tmp_path, 2, ["--set", "mesh.dp=2", "--set", "mesh.zero1=true", "--max-steps", "4", "--resume", "auto"], "ck")
  assert r.returncode == 0, r.stderr[-3000:]
  got = losses(r.stdout)
  np.testing.assert_allclose([got[3], got[4]], [reference[3], reference[4]], **TOLERANCE)


def test_the_mlperf_log_is_written_once_and_passes_the_checker(tmp_path):
  """The llama31_8b recipe shrunk (as tests/trainer/test_launch.py does) on generated C4, 2 hosts x 1 device."""
  from trainer.data.tiny_corpus import build_markov_c4
  build_markov_c4(str(tmp_path / "c4"), vocab=32, seq_len=8192, train_samples=64, validation_samples=1024)
  shrunk = ["mesh.device=CPU", "mesh.dp=1", "mesh.zero1=false", "mesh.hosts=2", "train.micro_batch_size=8", "model.dim=16",
            "model.n_layers=0", "model.n_heads=4", "model.n_kv_heads=4", "model.ffn_dim=16", "model.vocab_size=32", "optimizer.lr=0.05",
            "schedule.warmup_samples=16", "eval.interval_samples=16", f"data.path={tmp_path}/c4", f"checkpoint.dir={tmp_path}/ck"]
  r = mpirun(2, [LAUNCH, os.path.join(ROOT, "recipes/llama31_8b.yaml"), *[a for kv in shrunk for a in ("--set", kv)],
                 "--results", str(tmp_path / "sub"), "--no-progress"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  logs = sorted((tmp_path / "sub" / "logs").glob("*.log"))
  assert len(logs) == 1 and r.stdout.count("reached the target") == 1
  keys = [json.loads(l.split(" ", 1)[1])["key"] for l in logs[0].read_text().splitlines() if l.startswith(":::MLLOG")]
  assert keys.count("run_start") == 1 and keys.count("run_stop") == 1
  c = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", "6.1.0",
                      "--log_output", str(tmp_path / "checker.log"), str(logs[0])], capture_output=True, text=True)
  assert "SUCCESS" in (c.stdout + c.stderr).strip().splitlines()[-1], c.stdout[-3000:] + c.stderr[-3000:]
  desc = json.loads((tmp_path / "sub" / "systems" / "8xH200.json").read_text())
  assert desc["number_of_nodes"] == "2"


def test_bad_input_is_one_line_from_host_0_and_exit_code_2(tmp_path):
  other = tmp_path / "other"   # the project with one source file changed: other code
  import shutil
  shutil.copytree(ROOT, other, ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv", "results", "checkpoints"))
  with open(other / "trainer" / "loop.py", "a") as f: f.write("# another version\n")
  base = [*TINY, "--set", "mesh.dp=2", "--max-steps", "1"]
  cases = {
    "the recipe's mesh.hosts is 4 but 2 processes were started": ["-n", "2", sys.executable, LAUNCH, *base, "--set", "mesh.hosts=4", "--set", "mesh.dp=1",
                                                                  "--set", f"checkpoint.dir={tmp_path}/a"],
    "host 1 got another recipe or other --set overrides than host 0": ["-n", "1", sys.executable, LAUNCH, *base, "--set", "mesh.hosts=2", "--set", f"checkpoint.dir={tmp_path}/b", ":",
                                                                       "-n", "1", sys.executable, LAUNCH, *base, "--set", "mesh.hosts=2", "--set", f"checkpoint.dir={tmp_path}/b", "--set", "optimizer.lr=0.1"],
    "host 1 runs other code than host 0": ["-n", "1", sys.executable, LAUNCH, *base, "--set", "mesh.hosts=2", "--set", f"checkpoint.dir={tmp_path}/c", ":",
                                          "-n", "1", sys.executable, str(other / "launch.py"), *base, "--set", "mesh.hosts=2", "--set", f"checkpoint.dir={tmp_path}/c"],
    "the checkpoint folder ck is not shared: host 1 cannot see": ["-n", "1", "--wdir", str(tmp_path / "w0"), sys.executable, LAUNCH, *base, "--set", "mesh.hosts=2", "--set", "checkpoint.dir=ck", ":",
                                                                 "-n", "1", "--wdir", str(tmp_path / "w1"), sys.executable, LAUNCH, *base, "--set", "mesh.hosts=2", "--set", "checkpoint.dir=ck"],
  }
  for d in ("w0", "w1"): os.makedirs(tmp_path / d)
  from mpi import mpmd
  for want, cmd in cases.items():
    t = time.monotonic()
    r = mpmd(cmd, tmp_path, timeout=120)
    ours = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.returncode == 2 and len(ours) == 1 and want in ours[0] and time.monotonic() - t < 30, (want, r.returncode, r.stderr[-2000:])


def test_device_buffers_cross_hosts_through_host_memory(tmp_path):
  """GPU devices' chunks are staged through host memory (StagedMPI): simulated AMD GPUs (trainer/drivers/amd/sim), 2
  hosts x 1 GPU, plain and ZeRO-1, give the losses of 1 host x 2 GPUs."""
  from trainer.drivers.amd import compiler
  if compiler.unavailable_reason(): pytest.skip(compiler.unavailable_reason())
  gpu = ["--set", "mesh.device=AMD", "--set", "train.global_batch_size=4", "--max-steps", "3"]
  one = subprocess.run([sys.executable, LAUNCH, *TINY, *gpu, "--set", "mesh.dp=2", "--set", f"checkpoint.dir={tmp_path}/one", "--results", str(tmp_path / "r")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ, TRAINER_AMD_SIM="gfx942,gfx942"))
  assert one.returncode == 0, one.stderr[-3000:]
  for zero1 in ("false", "true"):
    r = hosts(tmp_path, 2, gpu + ["--set", "mesh.dp=1", "--set", f"mesh.zero1={zero1}"], f"two{zero1}", env={"TRAINER_AMD_SIM": "gfx942"})
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = losses(r.stdout), losses(one.stdout)
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)], **TOLERANCE)
