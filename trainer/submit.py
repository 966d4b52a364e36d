"""python -m trainer.submit FOLDER: turn the runs a submission folder has collected into what MLPerf receives.

Every benchmark run keeps its MLPerf log in FOLDER/logs/ with a small record beside it (<log>.json: benchmark,
system, ruleset, the digest of the code that ran). This command, per (system, benchmark):
  1. orders the finished runs by their run_start time and picks N consecutive ones as the training rules prescribe
     (N = 10 for llama31_8b, 5 for resnet: the package checker's counts): the window of N whose olympic score is
     closest to the median score of all windows, a run that did not reach the target counting as infinitely slow
     and a window with more than one such run being invalid (training_rules.adoc, "Scoring" and "Benchmark
     Results"; quoted in --help);
  2. writes them as results/<system>/<benchmark>/result_0..N-1.txt (replacing what was there);
  3. writes benchmarks/<benchmark>/implementations/<implementation>/: the project's source as it was when the runs
     ran (refused if the code changed since: the digests must match) and a README with the run command;
  4. runs mlperf_logging.package_checker on FOLDER and prints its verdict.
systems/<system>.json is written by the runs themselves (they can read the accelerators).
"""
from __future__ import annotations
import argparse, json, math, os, shutil, statistics, subprocess, sys
from .source import source_digest, source_files, project_root

RULE = """Which runs are submitted (mlcommons/training_policies training_rules.adoc, "Scoring"): "each benchmark
submission is composed of a set of N independent runs" ... "it is also allowed to run M>N independent runs as a
group and to designate N consecutive runs from the group as the runs to be used for scoring, provided that the
submitter chooses the N consecutive runs that are closest to the median result." "Sets of N consecutive runs that
would create an invalid benchmark result should be included in the median calculation as "infinite" scores. If the
median set would be an invalid benchmark result, the entire result is invalid." "'consecutive' is defined as an
objective and deterministic method, such as submission timestamps." ("Benchmark Results": "a single
non-converging run may be treated as the slowest run and dropped. A benchmark result is invalid if there is more
than one non-converging run.") Here runs are ordered by their run_start time."""


class SubmitError(Exception):
  """Why a folder cannot be submitted, in one line."""


def read_runs(folder: str) -> list[dict]:
  """The benchmark runs recorded in folder/logs: each run's record with its log's path, run_start and run_stop times
  (ms) and status ('success', 'aborted', or None while unfinished)."""
  logs = os.path.join(folder, "logs")
  runs = []
  for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
    if not name.endswith(".log") or not os.path.exists(os.path.join(logs, name + ".json")): continue
    with open(os.path.join(logs, name + ".json")) as f: run = json.load(f)
    run["log"] = os.path.join(logs, name)
    run.update(start=None, stop=None, status=None)
    with open(run["log"]) as f:
      for line in f:
        if not line.startswith(":::MLLOG"): continue
        event = json.loads(line.split(" ", 1)[1])
        if event["key"] == "run_start": run["start"] = event["time_ms"]
        if event["key"] == "run_stop": run["stop"], run["status"] = event["time_ms"], event["metadata"].get("status")
    runs.append(run)
  return runs


def minutes(run: dict) -> float:
  """A finished run's time to train in minutes; infinite if it stopped without reaching the target."""
  return (run["stop"] - run["start"]) / 60000 if run["status"] == "success" else math.inf


def olympic(times: list[float]) -> float:
  """The benchmark result of a set of runs: drop the fastest and the slowest, average the rest; infinite (invalid)
  with more than one run that did not converge."""
  if sum(math.isinf(t) for t in times) > 1: return math.inf
  kept = sorted(times)[1:-1]
  return sum(kept) / len(kept)


def choose(runs: list[dict], n: int) -> list[dict]:
  """The n consecutive runs (by run_start) closest to the median result of every window of n (module docstring)."""
  runs = sorted(runs, key=lambda r: r["start"])
  if len(runs) < n: raise SubmitError(f"{len(runs)} finished runs, the rules need {n}")
  windows = [runs[i:i + n] for i in range(len(runs) - n + 1)]
  scores = [olympic([minutes(r) for r in w]) for w in windows]
  median = statistics.median_low(scores)   # one of the windows' own scores, so infinity stays comparable
  if math.isinf(median): raise SubmitError(f"the median set of {n} consecutive runs has more than one run that did not reach the target: the result is invalid")
  best = min(range(len(windows)), key=lambda i: (abs(scores[i] - median), i))
  return windows[best]


def write_results(folder: str, system: str, benchmark: str, chosen: list[dict]) -> str:
  out = os.path.join(folder, "results", system, benchmark)
  os.makedirs(out, exist_ok=True)
  for old in os.listdir(out):
    if old.startswith("result_") and old.endswith(".txt"): os.remove(os.path.join(out, old))
  for i, run in enumerate(chosen): shutil.copyfile(run["log"], os.path.join(out, f"result_{i}.txt"))
  return out


def write_implementation(folder: str, benchmark: str, name: str, chosen: list[dict]) -> str:
  """benchmarks/<benchmark>/implementations/<name>/: the project's source files, which must be the ones that ran."""
  digests = {r["source_digest"] for r in chosen}
  if len(digests) > 1: raise SubmitError(f"the chosen {benchmark} runs ran {len(digests)} different versions of the code")
  here = source_digest()
  if digests != {here}:
    raise SubmitError(f"the code changed since the {benchmark} runs (their source digest {digests.pop()[:12]}, this tree's {here[:12]}): "
                      "submit from the tree that ran them")
  out = os.path.join(folder, "benchmarks", benchmark, "implementations", name)
  if os.path.isdir(out): shutil.rmtree(out)
  root = project_root()
  for rel in source_files():
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    shutil.copyfile(os.path.join(root, rel), os.path.join(out, rel))
  run = chosen[0]
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write(f"# {benchmark}: trainer\n\nThe training system that produced these results: its source as it ran "
            f"(source digest {here}; git commit {run.get('commit') or 'unknown'}{' with uncommitted changes' if run.get('dirty') else ''}).\n\n"
            f"Each run: `{run.get('command') or 'python launch.py ' + run.get('recipe', '')}` (no --seed: each run draws one and logs it).\n"
            f"Requirements and setup: see `pyproject.toml` (`pip install -e .`); data preparation: the recipe's comments and the project README.\n")
  return out


def check_package(folder: str, ruleset: str) -> list[str]:
  """mlperf_logging.package_checker's ERROR lines for the folder (empty: it found none)."""
  log = os.path.join(folder, "package_checker.log")
  subprocess.run([sys.executable, "-m", "mlperf_logging.package_checker", folder, "training", ruleset, "--log_output", log],
                 capture_output=True, text=True, timeout=1800)
  with open(log) as f: return [line.strip() for line in f if line.startswith("ERROR")]


def submit(folder: str, implementation: str = "trainer", check: bool = True) -> list[str]:
  """Do steps 1-4 of the module docstring for every (system, benchmark) in the folder; the checker's errors."""
  runs = [r for r in read_runs(folder) if r["status"] is not None]
  if not runs: raise SubmitError(f"no finished benchmark runs in {os.path.join(folder, 'logs')}")
  rulesets = {r["ruleset"] for r in runs}
  if len(rulesets) > 1: raise SubmitError(f"runs of rulesets {', '.join(sorted(rulesets))} in one folder: give each ruleset a folder of its own")
  from mlperf_logging.benchmark_meta import get_result_file_counts
  counts = get_result_file_counts("training")
  for system, benchmark in sorted({(r["system"], r["benchmark"]) for r in runs}):
    group = [r for r in runs if (r["system"], r["benchmark"]) == (system, benchmark)]
    try:
      chosen = choose(group, counts[benchmark])
    except SubmitError as e: raise SubmitError(f"{benchmark} on {system}: {e}") from None
    if not os.path.exists(os.path.join(folder, "systems", f"{system}.json")):
      raise SubmitError(f"{os.path.join(folder, 'systems', system + '.json')} is missing (a finished run writes it)")
    write_results(folder, system, benchmark, chosen)
    write_implementation(folder, benchmark, implementation, chosen)
    print(f"{benchmark} on {system}: runs {', '.join(os.path.basename(r['log']) for r in chosen)} "
          f"(result {olympic([minutes(r) for r in chosen]):.2f} minutes)")
  return check_package(folder, rulesets.pop()) if check else []


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m trainer.submit", formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Select the runs of a submission folder as the MLPerf rules prescribe, write results/ and "
                                          "benchmarks/, and run the package checker.", epilog=RULE)
  p.add_argument("folder", help="the submission folder the runs wrote into (launch.py --results DIR)")
  p.add_argument("--implementation", default="trainer", help="name of benchmarks/<benchmark>/implementations/<name> (default: trainer)")
  args = p.parse_args(argv)
  try:
    errors = submit(args.folder, args.implementation)
  except SubmitError as e:
    print(f"error: {e}", file=sys.stderr); return 2
  for e in errors: print(e)
  print("package checker: " + ("no errors" if not errors else f"{len(errors)} errors (see {os.path.join(args.folder, 'package_checker.log')})"))
  return 0 if not errors else 1


if __name__ == "__main__":
  sys.exit(main())
