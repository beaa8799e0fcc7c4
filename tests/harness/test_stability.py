"""The ball check of the GPT example (``benchmarks.gpt.monitor``): norms by hand, violations found,
and a short constrained Scion run that stays finite and inside its balls."""

import math

import numpy as np
import pytest
from flax import nnx

from benchmarks.gpt import model as model_lib
from benchmarks.gpt import monitor
from benchmarks.gpt import train as train_lib
from optax_lmo import Group, Rules, norms

RULES = Rules([(r"(^|/)embed/embedding$", Group(norms.ColNorm(), 1.0)),  # the roles, by hand
               (r"(^|/)head/kernel$", Group(norms.RowNorm(), 10.0)),
               (r"(^|/)kernel$", Group(norms.Spectral(), 3.0)),
               (r"(^|/)scale$", Group(norms.BiasRMS(), 1.0, role="gain"))])


def _params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "embed": {"embedding": rng.normal(size=(11, 8)).astype(np.float32)},
      "blocks": {"0": {"mlp": {"fc_in": {"kernel": rng.normal(size=(8, 32)).astype(np.float32)}},
                       "norm1": {"scale": rng.normal(size=(8,)).astype(np.float32)}}},
      "head": {"kernel": rng.normal(size=(8, 11)).astype(np.float32)},
  }


def test_leaf_norms_match_numpy_by_hand():
  p = _params()
  rows = {r["path"]: r for r in monitor.leaf_norms(p, RULES)}
  e, w = p["embed"]["embedding"], p["blocks"]["0"]["mlp"]["fc_in"]["kernel"]
  h, g = p["head"]["kernel"], p["blocks"]["0"]["norm1"]["scale"]
  want = {  # (norm, radius, value): the definitions, in numpy
      "embed/embedding": ("ColNorm", 1.0, np.linalg.norm(e, axis=1).max() / np.sqrt(8)),
      "blocks/0/mlp/fc_in/kernel": ("Spectral", 3.0,
                                    np.sqrt(8 / 32) * np.linalg.svd(w, compute_uv=False)[0]),
      "blocks/0/norm1/scale": ("BiasRMS", 1.0, np.sqrt(np.mean(g**2))),
      "head/kernel": ("RowNorm", 10.0, np.sqrt(8) * np.linalg.norm(h, axis=0).max()),
  }
  assert set(rows) == set(want)
  for path, (norm, radius, value) in want.items():
    r = rows[path]
    assert (r["norm"], r["radius"], r["finite"]) == (norm, radius, True), path
    assert r["value"] == pytest.approx(value, rel=1e-5), path


def test_violations_name_the_leaf_and_the_problem():
  p = _params()
  rows = monitor.leaf_norms(p, RULES)
  inside = [dict(r, value=r["radius"] * (1 + 0.5e-3)) for r in rows]  # within tol
  assert monitor.violations(7, 1.5, inside, tol=1e-3) == []
  outside = [dict(r, value=2 * r["radius"]) if r["path"] == "head/kernel" else r for r in inside]
  (bad,) = monitor.violations(7, 1.5, outside, tol=1e-3)
  assert bad.startswith("step 7: head/kernel: RowNorm norm 20 exceeds its radius 10")
  p["blocks"]["0"]["norm1"]["scale"][3] = np.nan
  rows = monitor.leaf_norms(p, RULES)
  nan_row = next(r for r in rows if r["path"] == "blocks/0/norm1/scale")
  assert not nan_row["finite"] and math.isnan(nan_row["value"])
  bad = monitor.violations(9, float("inf"), rows, tol=1e-3)
  assert "step 9: validation loss is inf" in bad
  assert "step 9: blocks/0/norm1/scale has NaN or Inf entries" in bad


def test_short_scion_run_stays_finite_and_in_its_balls(tmp_path):
  cfg = train_lib.make_config(steps=30, width=32, depth=1, heads=2, batch=8, seq=32, lr=2**-4,
                              init="scion", hidden_radius=3.0, output_radius=10.0,
                              eval_every=10, eval_batches=1, ckpt_every=30,
                              workdir=str(tmp_path), progress=False, plot=False)
  check = monitor.BallCheck(None, tol=1e-3)  # the rules of the model it checks
  out = train_lib.train(cfg, on_eval=check)
  assert out["step"] == 30 and math.isfinite(out["val_loss"])
  assert check.violations == [], check.violations
  assert [e["step"] for e in check.evals] == [0, 10, 20, 30]
  n_leaves = 3 + 6  # embedding, final gain, head; 4 kernels and 2 gains in the block
  assert len(check.leaves) == n_leaves
  # The scion init puts every leaf on its sphere, and the constrained steps keep it inside.
  assert check.evals[0]["max_ratio"] == pytest.approx(1.0, abs=1e-4)
  for path, leaf in check.leaves.items():
    assert leaf["max_ratio"] <= 1 + 1e-3, path
    assert leaf["final_ratio"] < 1.0, path  # a 2**-4 step pulls every leaf off the sphere
  p = out["params"]["head/kernel"]  # the check's head norm is the RowNorm, by hand
  assert check.leaves["head/kernel"]["final_ratio"] == pytest.approx(
      np.sqrt(p.shape[0]) * np.linalg.norm(p, axis=0).max() / train_lib.resolve(cfg).output_radius,
      rel=1e-5)


def test_ball_check_catches_a_leaf_outside_its_ball():
  """The check is not vacuous: a model whose head is twice its radius is reported."""
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=1, heads=2, init="scion",
                            output_radius=10.0)
  model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
  model.head.kernel[...] = 2 * model.head.kernel[...]
  check = monitor.BallCheck(model_lib.rules(cfg), tol=1e-3)
  check(5, 1.0, model)
  assert len(check.violations) == 1 and "step 5: head/kernel: RowNorm norm 20" in \
      check.violations[0], check.violations
