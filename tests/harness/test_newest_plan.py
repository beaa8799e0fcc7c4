"""The newest-of-the-family plan (``benchmarks.newest.plan``), walked with made-up losses.

No training: each run's final loss is a known function of its row and learning rate, so
the test knows where each row's optimum is, and checks that every row's grid holds it
(extended past a winning edge, at most twice), that each best then runs at seed 1, that
every setting runs once, that the plan ends, and what the report says.
"""

import math

import pytest

from benchmarks import ablation as ab
from benchmarks import newest as nw
from benchmarks.gpt import train as train_lib

# Each row's best learning rate as a multiple of its centre, and its best loss.
# scion_aol's x16 lies past two extensions (x4, x8); hyperball's x1/8 is the second one.
OPTIMA = {"scion": (1.0, 1.49), "scion_row_norm": (4.0, 1.47), "normuon": (0.25, 1.50),
          "scion_aol": (16.0, 1.495), "hyperball": (1 / 8, 1.45)}


def _row(s: dict) -> str:
  return next(name for name, (base, _) in nw.ROWS.items()
              if {k: v for k, v in s.items() if k not in ("lr", "seed")} == base)


def fake_loss(s: dict) -> float:
  if s["optimizer"] == "adamw":
    return 1.6
  name = _row(s)
  factor, best = OPTIMA[name]
  centre = nw.ROWS[name][1]
  return best + 0.02 * math.log2(s["lr"] / (centre * factor)) ** 2 + 0.003 * s.get("seed", 0)


def walk():
  runs, order = {}, []
  for _ in range(100):
    todo = [(st, p) for st, pts in nw.plan(runs).items() for p in pts if ab.key(p) not in runs]
    if not todo:
      return runs, order
    stage, s = todo[0]
    loss = fake_loss(s)
    runs[ab.key(s)] = dict(row=stage, settings=s, val_loss=loss,
                           curve=[[0, 4.2], [500, loss + 0.2], [1000, loss]])
    order.append((stage, s))
  raise AssertionError("the plan does not end")


def test_each_row_finds_its_optimum_inside_its_grid_then_runs_it_at_seed_1():
  runs, order = walk()
  keys = [ab.key(s) for _, s in order]
  assert len(keys) == len(set(keys)), "a setting ran twice"
  for name, (base, centre) in nw.ROWS.items():
    mine = [s for st, s in order if st == name]
    grid = sorted(s["lr"] / centre for s in mine if "seed" not in s)
    factor = OPTIMA[name][0]
    inside = grid[0] < factor < grid[-1]
    extended = len(grid) == 3 + ab.MAX_EXTEND
    assert inside or extended, (name, grid)
    assert len(grid) <= 3 + ab.MAX_EXTEND and {0.5, 1.0, 2.0} <= set(grid)
    best = min((s for s in mine if "seed" not in s), key=lambda s: runs[ab.key(s)]["val_loss"])
    assert mine[-1] == {**best, "seed": 1}, name  # its best again at seed 1, last
    assert all({k: v for k, v in s.items() if k not in ("lr", "seed")} == base for s in mine)
  # scion_aol's grid stops at x8, two extensions past x2, short of its optimum
  assert sorted(s["lr"] for st, s in order if st == "scion_aol" and "seed" not in s)[-1] == (
      8.0 * nw.ROWS["scion_aol"][1])
  assert [s for st, s in order if st == "adamw_seed1"] == [ab.ADAMW_SEED1]
  assert 21 <= len(order) <= 31  # the estimate the docs give


def test_every_row_is_a_valid_trainer_config():
  for base, centre in nw.ROWS.values():
    train_lib.validate(train_lib.make_config(**nw.SHAPE, **base, lr=centre))


def _result(recipe=None):
  runs, _ = walk()
  return dict(runs=list(runs.values()), recipe=recipe, baselines=[
      dict(optimizer="adamw", lr=1.5e-3, val_loss=1.6, curve=[[0, 4.2], [1000, 1.6]])])


def test_summary_and_report_name_each_row_best_and_the_verdicts():
  result = _result(dict(settings={}, val_loss=1.4722, val_loss_seed1=1.4754))
  rows = nw.summary(result)
  for name, (factor, loss) in OPTIMA.items():
    (best,) = [r for r in rows if r["row"] == name and r["best"]]
    assert best["val_loss"] == pytest.approx(loss + (0.02 if factor == 16.0 else 0))
    assert best["edge"] == (factor in (16.0, 1 / 8)), name
    assert best["ratio"] < 1.0  # reaches AdamW's 1.6 before AdamW's own last step
  table = nw.markdown(result)
  assert table.count("\n| ") == len(rows)
  verdicts = nw.verdicts(result)
  assert verdicts["hyperball"].startswith("beats it")  # 1.45 and 1.453
  assert verdicts["scion"].startswith("does not beat")
  assert verdicts["scion_row_norm"].startswith("does not beat")  # 1.47: within the noise
  assert "beats it" in table and "Today's best Scion recipe" in table
  assert nw.verdicts(_result(None))["scion"] == "not run yet"


def test_the_recipe_is_read_from_the_ablation_results():
  recipe = nw.recipe(nw.os.path.join(nw._common.RESULTS, "ablation.json"))
  assert recipe["val_loss"] == pytest.approx(1.4722, abs=1e-4)
  assert recipe["val_loss_seed1"] == pytest.approx(1.4754, abs=1e-4)
