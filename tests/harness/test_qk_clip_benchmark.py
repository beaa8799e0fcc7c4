"""``benchmarks/qk_clip.py`` without training: its spike count, its tau, its runs and its table."""

import math

from benchmarks import qk_clip as qk


def test_a_spike_is_a_rise_over_the_recent_lowest_loss():
  assert qk.spikes([3.0, 2.5, 2.0, 1.9, 1.95, 1.85]) == 0  # noise below the margin
  assert qk.spikes([2.0, 1.9, 2.2, 1.8]) == 1  # 0.3 over the lowest before it
  # The window: the last loss is 0.25 above the first, six records back: not a spike.
  assert qk.spikes([1.4, 1.55, 1.59, 1.59, 1.59, 1.59, 1.65]) == 0
  assert qk.spikes([1.4, 1.55, 1.59, 1.59, 1.59, 1.59, 1.65], window=6) == 1
  assert qk.spikes([1.5, 1.6, float("nan"), 1.5]) == 1  # a non-finite loss counts
  assert qk.spikes([1.0, 1.5], spike=0.6) == 0 and qk.spikes([1.0, 1.5], spike=0.4) == 1


def test_tau_is_the_reference_runs_largest_logit_rounded_up_and_only_the_clip_run_takes_it():
  ref = dict(max_logit=[[0, 4.2], [50, 34.4], [100, 31.8]])
  tau = qk.tau_from(ref)
  assert tau == 35.0
  base = qk.settings_for("muon", "reference", tau, seed=1)
  assert base == {**qk.ARMS["muon"], "seed": 1}
  assert qk.settings_for("muon", "4x", tau, seed=1) == {**base, "lr": base["lr"] * qk.FACTOR}
  assert qk.settings_for("muon", "4x + clip", tau, seed=1) == {
      **base, "lr": base["lr"] * qk.FACTOR, "qk_clip": 35.0}


def test_the_table_has_a_row_per_run_with_its_peak_and_spikes():
  def run(variant, lr, logits, losses, clip=None):
    s = {**qk.ARMS["scion"], "seed": 0, "lr": lr, **({} if clip is None else {"qk_clip": clip})}
    return dict(arm="scion", variant=variant, settings=s, val_loss=losses[-1],
                curve=[[i * 50, v] for i, v in enumerate(losses)],
                max_logit=[[i * 50, v] for i, v in enumerate(logits)],
                train=[[i * 10, v] for i, v in enumerate(losses)], spikes=qk.spikes(losses))

  result = dict(runs=[run("reference", 2**-11, [5.0, 30.0, 20.0], [4.0, 2.0, 1.5]),
                      run("4x", 2**-9, [5.0, 280.0, 17.0], [4.0, 2.5, 1.52]),
                      run("4x + clip", 2**-9, [5.0, 41.0, 15.0], [4.0, 2.1, 1.50], clip=31.0)])
  rows = qk.rows(result)
  assert [(r["variant"], r["peak"], r["final_logit"], r["spikes"]) for r in rows] == [
      ("reference", 30.0, 20.0, 0), ("4x", 280.0, 17.0, 0), ("4x + clip", 41.0, 15.0, 0)]
  assert math.isclose(rows[1]["worst"], 1.52 - 2.5) and rows[2]["tau"] == 31.0
  table = qk.markdown(result)
  assert table.count("\n| scion |") == 3 and "| 4x + clip | 0 | 2^-9 | 31 | 1.5000 |" in table
