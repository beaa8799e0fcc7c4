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
  return (1.5 + 0.01 * math.log2(s["hidden_radius"] / best_hidden) ** 2
          + 0.02 * math.log2(s["lr"] / (on_diagonal * best_lr_factor)) ** 2
          + 0.05 * (s.get("init", "rms") != "rms"))


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
  assert stages[-5:] == ["views"] * 5 and list(ab.plan(runs))[-1] == "views" == ab.STAGES[-1]
  views = [s for st, s in order if st == "views"]
  best = {k: v for k, v in short.items() if k != "steps"}  # the best Scion run, full length
  assert views[:2] == [{**best, "qkv_view": v} for v in ("split", "per_head")]
  assert views[2:] == [{**ab.MUON, "qkv_view": v} for v in ("fused", "split", "per_head")]


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
  assert [("qkv_view split" in v, "qkv_view per_head" in v, "optimizer muon" in v)
          for v in views] == [(True, False, False), (False, True, False), (False, False, True),
                              (True, False, True), (False, True, True)]
  assert "qkv_view" not in views[2] and "qkv_view" not in table.split("| views |")[0]


def test_muon_is_our_muons_best_run_in_the_convergence_sweep():
  """MUON: the lowest final loss among convergence.json's runs of ol.muon, at its settings."""
  with open(os.path.join(_common.RESULTS, "convergence.json")) as f:
    conv = json.load(f)
  assert all(conv["config"][k] == v for k, v in ab.SHAPE.items())
  top = min((r for r in conv["runs"] if r["optimizer"] == "muon"), key=lambda r: r["val_loss"])
  assert (top["lr"], top.get("init"), top["beta"]) == (ab.MUON["lr"], ab.MUON["init"], None)
  resolved = optim.resolve(train_lib.make_config(**ab.SHAPE, **ab.MUON))
  assert (resolved.hidden_radius, resolved.output_radius, resolved.decay_frac) == (
      top["hidden_radius"], top["output_radius"], top["decay_frac"])
