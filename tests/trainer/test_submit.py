"""trainer.submit's choice of runs, as training_rules.adoc prescribes: N consecutive runs (by run_start) whose olympic
score is closest to the median of every window's, a run that missed the target counting as infinitely slow."""
import math
import pytest
from trainer.submit import SubmitError, choose, olympic


def runs(*minutes):
  """Runs that started one hour apart and took the given minutes (None: stopped without reaching the target)."""
  return [{"start": i * 3_600_000, "stop": i * 3_600_000 + int((m or 30) * 60_000), "status": "success" if m else "aborted", "id": i}
          for i, m in enumerate(minutes)]


def test_olympic_score_drops_the_fastest_and_the_slowest():
  assert olympic([10, 20, 30, 40, 100]) == 30
  assert olympic([10, 20, 30, 40, math.inf]) == 30          # one run that missed the target is the slowest, dropped
  assert math.isinf(olympic([10, 20, math.inf, 40, math.inf]))


def test_exactly_n_runs_are_all_submitted_in_order():
  rs = runs(12, 10, 11, 13, 9)
  assert [r["id"] for r in choose(rs[::-1], 5)] == [0, 1, 2, 3, 4]


def test_the_window_closest_to_the_median_is_chosen():
  # windows of 3 over 6 runs: [10,11,12] 11, [11,12,30] 12, [12,30,31] 30, [30,31,32] 31 -> median_low 12: window 1
  assert [r["id"] for r in choose(runs(10, 11, 12, 30, 31, 32), 3)] == [1, 2, 3]
  # a window with two failed runs is infinite and counts in the median: scores inf, inf, 15, 13 -> median_low 15
  # (without the infinite ones it would be 13, the last window)
  assert [r["id"] for r in choose(runs(10, None, None, 11, 15, 13), 3)] == [2, 3, 4]


def test_too_few_runs_or_an_invalid_median_set_is_refused():
  with pytest.raises(SubmitError, match="3 finished runs, the rules need 5"): choose(runs(1, 2, 3), 5)
  with pytest.raises(SubmitError, match="median set"): choose(runs(10, None, None, None, 12), 3)
