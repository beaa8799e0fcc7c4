"""The benchmark scripts' code paths at toy sizes: they run, record what they ran, and resume.

Each script runs as a subprocess (``python -m benchmarks.<name>``, as its docstring says to)
with flags small enough to finish in seconds on CPU; the numbers are not looked at, only the
structure of the result file and its consistency with the runs it holds.
"""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH_FLAGS = ["--only", "depth", "--depths", "1", "2", "--depth-width", "16", "--depth-steps",
               "3", "--optimizers", "scion", "--points", "3", "--extend", "0", "--batch", "2",
               "--seq", "8", "--eval-batches", "1", "--heads", "2"]


def _run(module: str, *flags: str) -> str:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
  proc = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


def _width_only_result() -> dict:
  """A result file as written before the depth sweep: one width sweep at the top level."""
  runs = [dict(optimizer="scion", width=w, lr=2.0**k, log2_lr=float(k), steps_done=100,
               train_loss=2.5, diverged=False, val_loss=2.0 + 0.1 * abs(k + 6) + 1 / w,
               output_norm=8.0, seconds=1.0) for w in (64, 128) for k in (-7, -6, -5)]
  config = dict(data="tinyshakespeare.txt", widths=[64, 128], depth=2, steps=100, batch=8,
                seq=64, points=3)
  return dict(benchmark="lr_transfer", command="python -m benchmarks.lr_transfer", config=config,
              grid={"scion": [2.0**-7, 2.0**-6, 2.0**-5]}, machine=dict(device="cpu"),
              runs=runs, complete=True, notes="kept as it is")


def test_lr_transfer_depth_sweep_alone_keeps_the_width_results(tmp_path):
  out = tmp_path / "lr_transfer.json"
  old = _width_only_result()
  out.write_text(json.dumps(old))

  _run("benchmarks.lr_transfer", *DEPTH_FLAGS, "--out", str(out))
  text = out.read_text()
  result = json.loads(text)
  assert str(tmp_path) not in text  # paths are recorded relative or by name alone
  old.pop("benchmark")
  assert result["width"] == old  # the width sweep is carried over untouched
  depth = result["depth"]
  assert depth["complete"] and depth["config"]["depths"] == [1, 2]
  assert depth["config"]["width"] == 16 and depth["config"]["steps"] == 3
  assert depth["command"].startswith("python -m benchmarks.lr_transfer --only depth")
  assert os.path.exists(tmp_path / "lr_transfer.png")
  for d in (1, 2):
    runs = [r for r in depth["runs"] if r["depth"] == d]
    assert sorted(r["lr"] for r in runs) == depth["grid"]["scion"]  # the whole grid, once
    finite = [r for r in runs if not r["diverged"]]
    assert all(r["steps_done"] == 3 and math.isfinite(r["val_loss"]) for r in finite)
    if finite:  # the recorded best is the lowest validation loss at that depth
      assert depth["best"]["scion"][str(d)]["lr"] == min(finite, key=lambda r: r["val_loss"])["lr"]

  # A resumed run with the same flags trains nothing and keeps every run.
  log = _run("benchmarks.lr_transfer", *DEPTH_FLAGS, "--resume", "--out", str(out))
  assert " val " not in log.split("== depth sweep")[0]  # no per-run training lines
  assert json.loads(out.read_text())["depth"]["runs"] == depth["runs"]

  # --report reads both sections back, the width one from its old layout too.
  report = _run("benchmarks.lr_transfer", "--report", "--out", str(out))
  assert "== width sweep" in report and "== depth sweep" in report


def test_step_overhead_update_chain_is_that_many_updates():
  """The update-alone timing's jitted chain of n updates ends where n plain updates do, and
  leaves the model and optimizer it was built from untouched (it donates a copy)."""
  import argparse

  import jax
  import numpy as np
  from flax import nnx

  from benchmarks import step_overhead as so
  from benchmarks.gpt import data as data_lib

  args = argparse.Namespace(width=16, depth=1, heads=2, seq=8, batch=2)
  data = data_lib.load(None)
  x, y = (jax.numpy.asarray(a) for a in data_lib.train_batch(data, seed=0, step=0, batch=2,
                                                               seq=8))
  for name in ("adamw", "scion"):
    model, opt, _ = so.build(name, args, data.vocab_size)
    _, grads = so.fwd_bwd(model, x, y)
    before = [np.asarray(p) for p in so._params(model)]
    chain, state = so.update_chain(model, opt, grads, 3)
    after_chain = nnx.merge(nnx.graphdef((model, opt)), chain(state))[0]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, so._params(model),
                                                                 strict=True))
    for _ in range(3):
      opt.update(model, grads)
    for a, b, c in zip(before, so._params(after_chain), so._params(model), strict=True):
      assert not np.array_equal(a, np.asarray(c)), name  # the updates moved the parameters
      moved = np.abs(np.asarray(c) - a).max()
      assert np.abs(np.asarray(b) - np.asarray(c)).max() <= 1e-2 * moved, name  # float32 noise
