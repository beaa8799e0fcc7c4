"""benchmarks/transfer.py: the grids it plans, the law's predictions, the JSON contract.

The plan is checked with fake runs (a loss that is a parabola in log2 lr around a
chosen optimum); the recorded ``benchmarks/results/transfer.json`` is checked
against the contract the docs and the fit read.
"""

import json
import math
import os

import pytest

import optax_lmo as ol
from benchmarks import transfer as tr

RESULT = os.path.join(tr._common.RESULTS, "transfer.json")


def _fake(runs, name, optimum):
  """Runs every planned lr at ``name`` with loss ``(log2 lr - log2 optimum)^2``."""
  point = tr.POINTS[name][1] if name != "base" else {}
  for _ in range(10):
    left = [t for t in tr.todo(runs, [name]) if t[2] == "scion"]
    if not left:
      return
    for _, _, opt, lr in left:
      loss = 1.0 + (math.log2(lr) - math.log2(optimum)) ** 2
      runs[tr.run_key(point, opt, lr)] = dict(lr=lr, seed=0, val_loss=loss,
                                              curve=[[0, 4.0], [10, loss]], output_norm=1.0)


def test_the_prediction_is_the_shipped_law_from_the_base_point():
  for name, (_, point) in tr.POINTS.items():
    p = tr.shape(point)
    want = ol.contrib.transfer_lr(tr.BASE_LR["scion"], tr.BASE["batch"], tr.tokens(tr.BASE),
                                  p["batch"], tr.tokens(p))
    assert tr.predicted_lr("scion", point) == pytest.approx(float(want), rel=1e-6), name
  assert tr.predicted_lr("scion", {}) == tr.BASE_LR["scion"]
  # The batch axis keeps the base's token budget; the horizon axis keeps its batch.
  for name, (axis, point) in tr.POINTS.items():
    p = tr.shape(point)
    if axis == "batch":
      assert tr.tokens(p) == tr.tokens(tr.BASE), name
    if axis == "horizon":
      assert p["batch"] == tr.BASE["batch"], name


@pytest.mark.parametrize("offset", [-4.0, -3.0, -0.3, 0.0, 0.6, 2.0, 6.0])
def test_the_grid_is_spaced_2x_and_extends_until_the_optimum_is_inside(offset):
  runs = {}
  centre = tr.predicted_lr("scion", tr.POINTS["h2000"][1])
  _fake(runs, "h2000", centre * 2.0**offset)
  lrs = tr.grid(runs, tr.POINTS["h2000"][1], "scion")
  assert len(lrs) >= 3
  assert all(b / a == pytest.approx(2.0) for a, b in zip(lrs, lrs[1:], strict=False))
  assert any(lr == pytest.approx(centre) for lr in lrs)  # the prediction is on the grid
  losses = [runs[tr.run_key(tr.POINTS["h2000"][1], "scion", lr)]["val_loss"] for lr in lrs]
  best = losses.index(min(losses))
  if abs(offset) < 1.0 + tr.MAX_EXTEND:  # reachable: the optimum ends inside the grid
    assert 0 < best < len(lrs) - 1, (offset, lrs)


def test_the_base_point_is_under_every_axis_and_points_follow_the_contract():
  runs = {}
  for name in ("base", "h250", "b64", "w64", "python"):
    _fake(runs, name, tr.predicted_lr("scion", tr.POINTS[name][1] if name != "base" else {}))
  points = tr.points(runs)
  base = [p for p in points if p["name"] == "base"]
  assert {p["axis"] for p in base} == set(tr.AXES)
  for p in points:
    for k in ("axis", "steps", "batch", "seq", "width", "depth", "corpus", "optimizer",
              "predicted_lr", "grid"):
      assert k in p, k
    for e in p["grid"]:
      assert {"lr", "seed", "val_loss", "curve", "output_norm"} <= set(e)


def test_the_fit_recovers_exponents_from_optima_on_the_law():
  """Fake optima exactly on a law (a, b): the fit reads a and b back."""
  a, b = 0.4, -0.2
  runs = {}
  for name in ("base", "h250", "h2000", "b64", "b8", "h500"):
    point = tr.POINTS[name][1] if name != "base" else {}
    p = tr.shape(point)
    optimum = tr.BASE_LR["scion"] * (p["batch"] / tr.BASE["batch"]) ** a * (
        tr.tokens(p) / tr.tokens(tr.BASE)) ** b
    _fake(runs, name, optimum)
  result = dict(points=tr.points(runs))
  fit = tr.fit(result, refined=True)
  assert fit["batch_exponent"] == pytest.approx(a, abs=0.02)
  assert fit["tokens_exponent"] == pytest.approx(b, abs=0.02)


@pytest.mark.skipif(not os.path.exists(RESULT), reason="no recorded transfer.json")
def test_the_recorded_result_follows_the_contract():
  with open(RESULT) as f:
    result = json.load(f)
  assert {"base", "points", "law"} <= set(result)
  axes = {p["axis"] for p in result["points"]}
  assert axes <= set(tr.AXES)
  for p in result["points"]:
    for k in ("axis", "steps", "batch", "seq", "width", "depth", "corpus", "optimizer",
              "predicted_lr", "grid"):
      assert k in p, k
    assert p["predicted_lr"] == pytest.approx(tr.predicted_lr(
        p["optimizer"], {k: p[k] for k in tr.BASE if p[k] != tr.BASE[k]}), rel=1e-9)
    for e in p["grid"]:
      assert {"lr", "seed", "val_loss", "curve", "output_norm"} <= set(e)
      if math.isfinite(e["val_loss"]):
        assert e["curve"][-1][0] == p["steps"] and e["curve"][-1][1] == pytest.approx(
            e["val_loss"], rel=1e-6)
  for axis in axes:
    assert any(p["axis"] == axis and p["name"] == "base" for p in result["points"]), axis


@pytest.mark.skipif(not os.path.exists(RESULT), reason="no recorded transfer.json")
def test_the_shipped_scion_law_is_the_recorded_fit():
  """ol.contrib.transfer_lr(law="scion")'s exponents are the fit between grid points of the
  recorded runs, to the two decimals shipped."""
  from optax_lmo._src import transfer as law_lib

  with open(RESULT) as f:
    fit = tr.fit(json.load(f), refined=True)
  assert law_lib.LAWS["scion"] == pytest.approx(
      (fit["batch_exponent"], fit["tokens_exponent"]), abs=0.0051)


def test_two_processes_share_a_point_and_merge(tmp_path, monkeypatch):
  """``--optimizers`` splits a point between two ``--out`` files; ``--merge`` writes their
  union, every run once, to a third."""
  calls = []

  def fake_run(point, opt, lr, data, root):
    calls.append(opt)
    loss = 1.0 + (math.log2(lr) - math.log2(tr.predicted_lr(opt, point))) ** 2
    return dict(lr=lr, seed=0, val_loss=loss, curve=[[tr.shape(point)["steps"], loss]],
                output_norm=1.0, seconds=0.0)

  monkeypatch.setattr(tr, "run_one", fake_run)
  monkeypatch.setattr(tr, "plot", lambda result, path: None)
  a, b, c = (str(tmp_path / f"{n}.json") for n in "abc")
  tr.main(["--points", "w64", "--optimizers", "scion", "--out", a])
  assert calls == ["scion"] * 3
  tr.main(["--points", "w64", "--optimizers", "adamw", "--out", b])
  assert calls == ["scion"] * 3 + ["adamw"] * 3
  tr.main(["--points", "", "--out", c, "--merge", f"{a},{b}"])
  assert len(calls) == 6  # merging runs nothing
  runs = tr.load_runs(c)
  assert runs == {**tr.load_runs(a), **tr.load_runs(b)}
  assert not tr.todo(runs, ["w64"])  # both optimizers' grids are complete
  with pytest.raises(SystemExit, match="--optimizers"):
    tr.main(["--points", "w64", "--optimizers", "sgd", "--out", a])
