"""The convergence sweep's plan (``benchmarks.convergence.next_job``), walked with made-up losses.

No training: each run's final loss is a known function of its settings, so the
test knows which learning rate, radius and decay should win and checks the plan
finds them, runs each setting once and ends.
"""

import json
import math
import types

import pytest

from benchmarks import convergence as cv

# Each optimum, in powers of 2 from its grid's centre (the grid spans -2 .. 1): inside the grid,
# on its lower edge, and 2 past its upper edge (both extension points needed).
BEST = {"adamw": -1, "scion": -1, "optax_muon": -2, "unconstrained_scion": 3, "muon": 0}


def offset(opt: str, lr: float) -> float:
  return math.log2(lr / cv.GRID_CENTER[opt])


def fake_loss(job: cv.Job) -> float:
  loss = 2.0 + 0.05 * (offset(job.optimizer, job.lr) - BEST[job.optimizer]) ** 2
  if job.optimizer == "scion":
    loss -= 0.03 * (job.hidden_radius >= 6) - 0.05 * (job.hidden_radius < 3)
    loss -= {20.0: 0.01, 5.0: -0.02}.get(job.output_radius, 0.0)
    loss -= {0.5: 0.015, 1.0: 0.02}.get(job.decay_frac, 0.0)
    loss += 0.2 * (job.beta == 0.5)
  return loss


def walk(args, limit=200, loss=None):
  runs = []
  while (job := cv.next_job(runs, args)) is not None:
    assert len(runs) < limit, "the plan does not end"
    loss_of = (loss or fake_loss)(job)
    runs.append(dict(**{k: getattr(job, k) for k in cv.Job.__dataclass_fields__},
                     key=json.loads(json.dumps(job.key())), val_loss=loss_of,
                     curve=[[0, 4.0], [job.steps, loss_of]]))
  return runs


@pytest.fixture(scope="module")
def runs():
  args = types.SimpleNamespace(points=4, extend=2, steps=100, variants=True,
                               optimizers=list(cv.OPTIMIZERS))
  return walk(args)


def test_every_setting_runs_once(runs):
  keys = [json.dumps(r["key"]) for r in runs]
  assert len(keys) == len(set(keys))


def test_grids_find_each_optimum_and_extend_past_a_winning_edge(runs):
  # The 4-point grid; past an edge while it wins, at most 2 points out.
  ran = {"adamw": [-2, -1, 0, 1], "scion": [-2, -1, 0, 1], "optax_muon": [-3, -2, -1, 0, 1],
         "unconstrained_scion": [-2, -1, 0, 1, 2, 3], "muon": [-2, -1, 0, 1]}
  for opt, best_at in BEST.items():
    offsets = sorted(round(offset(opt, r["lr"])) for r in runs if r["label"] == opt)
    assert offsets == ran[opt], opt
    best = min((r for r in runs if r["label"] == opt), key=lambda r: r["val_loss"])
    assert offset(opt, best["lr"]) == pytest.approx(best_at), opt


def test_variants_and_follow_ups_start_from_the_best_so_far(runs):
  labels = [r["label"] for r in runs]
  by = {r["label"]: r for r in runs}
  scion_lr = cv.GRID_CENTER["scion"] * 2.0 ** BEST["scion"]
  for label in ("scion beta 0.5", "scion hidden radius x0.5", "scion hidden radius x2"):
    assert by[label]["lr"] == scion_lr
  # The variants run right after Scion's grid, before the other optimizers' grids.
  assert labels.index("scion hidden radius x2") < labels.index("optax_muon")
  assert by["scion@0.67"]["steps"] == 67 and by["scion@0.67"]["hidden_radius"] == 6.0
  # Follow-ups from the best (hidden 6): doubled again, output 20 and 5, decay 50%.
  assert by["scion hidden radius 12"]["hidden_radius"] == 12.0
  for label, field, value in [("scion hidden radius 6, output radius 20", "output_radius", 20.0),
                              ("scion hidden radius 6, output radius 5", "output_radius", 5.0),
                              ("scion hidden radius 6, decay over 50%", "decay_frac", 0.5)]:
    assert by[label][field] == value and by[label]["hidden_radius"] == 6.0
  # Together: the winning output radius (20) and decay (50%); then from the best, 100% and lr x2.
  combined = by["scion combined"]
  assert (combined["output_radius"], combined["decay_frac"]) == (20.0, 0.5)
  assert by["scion decay over 100%"]["output_radius"] == 20.0
  assert by["scion decay over 100%"]["decay_frac"] == 1.0
  lr2 = by["scion lr x2"]
  assert lr2["lr"] == 2 * scion_lr and lr2["decay_frac"] == 1.0  # 100% won in fake_loss
  assert labels[-6:-4] == ["scion decay over 100%", "scion lr x2"]


def test_our_muon_runs_its_grid_again_from_flax_init_last(runs):
  grid = sorted(r["lr"] for r in runs if r["label"] == "muon")
  again = runs[-4:]
  assert [r["label"] for r in again] == ["muon standard init"] * 4
  assert sorted(r["lr"] for r in again) == grid
  assert all(r["init"] == "standard" and r["optimizer"] == "muon" for r in again)
  assert all(r["init"] is None for r in runs[:-4])


def test_our_muon_from_flax_init_goes_past_a_winning_edge():
  args = types.SimpleNamespace(points=4, extend=2, steps=100, variants=True,
                               optimizers=["adamw", "scion", "muon"])
  low = cv.GRID_CENTER["muon"] / 8

  def loss(job):  # the standard init prefers a rate below the grid
    return 2.0 + 0.1 * abs(math.log2(job.lr / low)) if job.init else fake_loss(job)

  runs = walk(args, loss=loss)
  lrs = [r["lr"] for r in runs if r["init"]]
  # The grid (1/4 .. 2 x the centre), then 1/8 (it wins) and 1/16 (it does not): 2 past the edge.
  assert lrs[4:] == [low, low / 2] and sorted(lrs[:4]) == cv.grid("muon", 4)


def test_a_resumed_sweep_may_add_optimizers_and_nothing_else():
  old = dict(preset="cpu", steps=1000, optimizers=["adamw", "scion"],
             grid_center={"adamw": 3e-3, "scion": 2**-7}, init={"adamw": "standard",
                                                                 "scion": "scion"})
  more = dict(old, optimizers=["adamw", "scion", "muon"],
              grid_center={**old["grid_center"], "muon": 0.04},
              init={**old["init"], "muon": "scion"})
  assert cv.same_sweep(old, old) and cv.same_sweep(old, more)
  assert not cv.same_sweep(more, old)  # one dropped
  assert not cv.same_sweep(old, dict(more, steps=500))
  assert not cv.same_sweep(old, dict(more, grid_center={**more["grid_center"], "scion": 1.0}))
  assert not cv.same_sweep(old, dict(more, init={**more["init"], "adamw": "scion"}))


def test_without_variants_only_the_grids_run():
  args = types.SimpleNamespace(points=2, extend=0, steps=10, variants=False,
                               optimizers=["adamw", "scion"])
  runs = walk(args)
  assert sorted({r["label"] for r in runs}) == ["adamw", "scion"] and len(runs) == 4
