"""Scion's ablation plan (``benchmarks.ablation.plan``), walked with made-up losses.

No training: each run's final loss is a known function of its settings, so the
test knows which radius and learning rate should win, and checks that the plan
finds them (extending a grid past a winning edge), runs each setting once, ends,
and that the summary names each stage's best run.
"""

import json
import math
import os

import pytest

from benchmarks import _common
from benchmarks import ablation as ab
from benchmarks.gpt import optim
from benchmarks.gpt import train as train_lib


def fake_loss(s: dict, best_hidden: float, best_lr_factor: float) -> float:
  if s["optimizer"] != "scion":
    return 1.6
  on_diagonal = ab._diagonal_point(s["hidden_radius"])["lr"]
  head = s["output_radius"] / (s["hidden_radius"] * 5 / 3)  # best at 5/3 of the hidden radius
  return (1.5 + 0.01 * math.log2(s["hidden_radius"] / best_hidden) ** 2
          + 0.02 * math.log2(s["lr"] / (on_diagonal * best_lr_factor)) ** 2
          + 0.01 * math.log2(head) ** 2 - 0.01 * (s.get("blocks") == "split")
          - 0.005 * bool(s.get("nesterov")) + 0.05 * (s.get("init", "rms") != "rms"))


def walk(best_hidden, best_lr_factor):
  runs, order = {}, []
  for _ in range(60):
    todo = [(st, p) for st, pts in ab.plan(runs).items() for p in pts if ab.key(p) not in runs]
    if not todo:
      return runs, order
    stage, s = todo[0]
    loss = fake_loss(s, best_hidden, best_lr_factor)
    runs[ab.key(s)] = dict(stage=stage, settings=s, val_loss=loss,
                           curve=[[0, 4.2], [500, loss + 0.2], [1000, loss]])
    order.append((stage, s))
  raise AssertionError("the plan does not end")


@pytest.mark.parametrize("best_hidden,best_lr_factor,edges",
                         [(24.0, 1.0, (6.0, 48.0)), (192.0, 0.5, (6.0, 192.0)),
                          (3.0, 2.0, (1.5, 48.0))])
def test_the_plan_finds_the_optimum_inside_its_grids_and_ends(best_hidden, best_lr_factor, edges):
  runs, order = walk(best_hidden, best_lr_factor)
  keys = [ab.key(s) for _, s in order]
  assert len(keys) == len(set(keys)), "a setting ran twice"
  diagonal = sorted(s["hidden_radius"] for st, s in order if st == "diagonal")
  assert (diagonal[0], diagonal[-1]) == edges
  best_diag = min((s for st, s in order if st == "diagonal"),
                  key=lambda s: runs[ab.key(s)]["val_loss"])
  assert best_diag["hidden_radius"] == best_hidden
  lrs = sorted(s["lr"] for st, s in order if st == "lr")
  centre = best_diag["lr"] * best_lr_factor
  assert lrs[0] < centre < lrs[-1]  # the lr optimum is inside the grid
  stages = [st for st, _ in order]
  assert stages.index("seed") > max(i for i, st in enumerate(stages) if st == "lr")
  assert {"short", "init", "schedule", "hybrid"} <= set(stages)
  short = next(s for st, s in order if st == "short")
  assert short["steps"] == 700 and short["lr"] == centre
  assert list(ab.plan(runs)) == list(ab.STAGES)  # every stage planned, in order
  views = [s for st, s in order if st == "views"]
  best = {k: v for k, v in short.items() if k != "steps"}  # the best Scion run, full length
  assert views[:2] == [{**best, "blocks": v} for v in ("split", "per_head")]
  assert views[2:] == [{**ab.MUON, "blocks": v} for v in ("fused", "split", "per_head")]
  assert [s for st, s in order if st == "nesterov"] == [{**best, "nesterov": True}]
  assert len([s for st, s in order if st == "polar"]) == 3
  # combined: the head stage's best radius, the split view and Nesterov (each won), an lr grid
  # around the best lr with its optimum inside, then that optimum at seed 1
  combined = [s for st, s in order if st == "combined"]
  head = min((s for st, s in order if st == "head"), key=lambda s: runs[ab.key(s)]["val_loss"])
  assert stages[-len(combined):] == ["combined"] * len(combined)
  both = {**best, "output_radius": head["output_radius"], "blocks": "split", "nesterov": True}
  grid = sorted(s["lr"] for s in combined[:-1])
  assert all({**s, "lr": best["lr"]} == both for s in combined[:-1])
  assert grid[0] < best["lr"] < grid[-1]
  assert combined[-1] == {**both, "seed": 1}


def test_summary_rows_name_each_stage_best():
  runs, _ = walk(24.0, 1.0)
  result = dict(runs=list(runs.values()), baselines=[
      dict(optimizer="adamw", lr=1.5e-3, val_loss=1.6, curve=[[0, 4.2], [1000, 1.6]]),
      dict(optimizer="optax_muon", lr=0.01, val_loss=1.55, curve=[[0, 4.2], [1000, 1.55]])])
  rows = ab.summary(result)
  diag = next(r for r in rows if r["stage"] == "diagonal" and r["best"])
  assert diag["what"]["hidden_radius"] == 24.0 and not diag["edge"]
  assert diag["ratio"] < 1.0  # reaches AdamW's 1.6 before AdamW's own last step
  table = ab.markdown(result)
  assert table.count("\n| ") == len(rows)  # after the header and its rule, one line a run
  assert sum(r["stage"] == "seed" for r in rows) == 3
  views = [line for line in table.splitlines() if line.startswith("| views |")]
  assert [("blocks split" in v, "blocks per_head" in v, "optimizer muon" in v)
          for v in views] == [(True, False, False), (False, True, False), (False, False, True),
                              (True, False, True), (False, True, True)]
  assert "blocks" not in views[2] and "blocks" not in table.split("| views |")[0]


def test_muon_is_our_muons_best_run_in_the_convergence_sweep():
  """MUON: the lowest final loss among convergence.json's runs of ol.muon, at its settings."""
  with open(os.path.join(_common.RESULTS, "convergence.json")) as f:
    conv = json.load(f)
  assert all(conv["config"][k] == v for k, v in ab.SHAPE.items())
  top = min((r for r in conv["runs"] if r["optimizer"] == "muon"), key=lambda r: r["val_loss"])
  assert (top["lr"], top.get("init"), top["beta"]) == (ab.MUON["lr"], ab.MUON["init"], None)
  resolved = optim.resolve(train_lib.make_config(**ab.SHAPE, **ab.MUON))
  assert resolved.decay_frac == top["decay_frac"]  # the radii: ol.muon routes by muon_rules()
