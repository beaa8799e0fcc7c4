"""Crash safety of the GPT example: SIGKILL it at random points, restart, same bits at the end.

The example runs as a subprocess (``python -m benchmarks.gpt.train`` with tiny
flags) and is killed with SIGKILL, then restarted with the same command, again
and again: at seeded random steps, during start-up (imports, compilation,
restore) and while a checkpoint is being written (orbax's
``<step>.orbax-checkpoint-tmp`` directory is on disk). Each restart must resume
from the newest complete checkpoint on disk (never from the half-written one),
and the run that finally completes must end with the same bits, parameters and
optimizer state alike, as one uninterrupted run.

``CRASH_SEED`` (environment) picks other kill points; the default is fixed.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from benchmarks.gpt import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, CKPT_EVERY = 36, 3
FLAGS = ["--steps", str(STEPS), "--ckpt-every", str(CKPT_EVERY), "--batch", "8", "--seq", "32",
         "--width", "32", "--depth", "1", "--heads", "2", "--eval-every", str(STEPS),
         "--eval-batches", "1", "--log-every", "1", "--keep-ckpts", "2", "--no-progress",
         "--no-plot"]
TMP = ".orbax-checkpoint-tmp"
MIN_KILLS, MAX_LAUNCHES = 6, 14


def _env(cache_dir: str) -> dict:
  """The subprocess environment: CPU, and a persistent compilation cache shared by the restarts."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _on_disk(ckpt_dir: str) -> tuple[list[int], list[str]]:
  """Finalized steps (directories named by a number) and orbax's unfinished temporary ones."""
  names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP in n)


def _step_of(tmp_name: str) -> int:
  return int(tmp_name.split(".")[0])


def _last_logged_step(workdir: str) -> int:
  path = os.path.join(workdir, "log.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    steps = re.findall(rb'"kind": "train", "step": (\d+)', f.read())
  return int(steps[-1]) if steps else 0


def _wait_for(p: subprocess.Popen, cond, timeout: float = 120.0) -> bool:
  """Polls ``cond()`` every millisecond until it holds (True) or ``p`` exits (False)."""
  t_end = time.monotonic() + timeout
  while time.monotonic() < t_end:
    if cond():
      return True
    if p.poll() is not None:
      return False
    time.sleep(0.001)
  raise TimeoutError("the training subprocess made no progress")


def _await_kill_point(p, mode: str, rng: random.Random, workdir: str, start: int,
                      floor: int) -> bool:
  """Waits for the moment ``mode`` names; True if ``p`` is still alive then (kill it).

  ``start``: the last step the log may hold from earlier launches (the new one
  rewrites it from its resume point on); ``floor``: saves up to this step may
  find an earlier launch's unfinished save.
  """
  ckpt_dir = os.path.join(workdir, "ckpt")
  if mode == "startup":  # imports, compilation or restore
    deadline = time.monotonic() + rng.uniform(0.5, 3.0)
    return _wait_for(p, lambda: time.monotonic() > deadline)
  if mode == "step":  # a random step a few past the resume point
    target = min(STEPS - 1, start + rng.randint(1, 2 * CKPT_EVERY))
    alive = _wait_for(p, lambda: _last_logged_step(workdir) >= target)
    time.sleep(rng.uniform(0.0, 0.05))
    return alive
  if mode == "checkpoint":  # as soon as a new save has begun writing
    return _wait_for(p, lambda: any(_step_of(n) > floor for n in _on_disk(ckpt_dir)[1]))
  return False  # "finish": let it run to the end


def _train_losses(workdir: str) -> list[tuple[int, float]]:
  with open(os.path.join(workdir, "log.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if r["kind"] == "train"]


def _restore_raw(ckpt_dir: str, step: int) -> dict[str, np.ndarray]:
  """The ``state`` item of a checkpoint as saved, read by orbax alone (no example code)."""
  with ocp.StandardCheckpointer() as c:
    tree = c.restore(os.path.join(ckpt_dir, str(step), "state"))
  return {k: np.asarray(v) for k, v in tree.items()}


def test_sigkill_and_restart_ends_bitwise_identical(tmp_path):
  rng = random.Random(int(os.environ.get("CRASH_SEED", "0")))
  workdir, ckpt_dir = str(tmp_path / "crashy"), str(tmp_path / "crashy" / "ckpt")
  cmd = [sys.executable, "-m", "benchmarks.gpt.train", *FLAGS, "--workdir", workdir]
  env = _env(str(tmp_path / "jax_cache"))
  # The uninterrupted reference, first (it fills the compilation cache). It saves only at the
  # end: checkpointing is bookkeeping and must not change the computation either.
  ref_dir = str(tmp_path / "ref")
  ref_cmd = [*cmd[:-1], ref_dir, "--ckpt-every", str(STEPS)]
  ref = subprocess.run(ref_cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert ref.returncode == 0 and "resuming" not in ref.stdout, ref.stdout + ref.stderr
  modes = ["step", "checkpoint", "startup", "step", "checkpoint", "step"]
  kills, mid_write, resumed = [], 0, []
  expected = None  # the step the next launch must resume from (None: a fresh start)
  t0 = time.monotonic()
  for launch in range(MAX_LAUNCHES):
    mode = modes[len(kills)] if len(kills) < len(modes) else rng.choice(["step", "checkpoint"])
    if mid_write == 0 and len(kills) >= MIN_KILLS:
      mode = "checkpoint"  # a mid-write kill is required; keep trying
    if len(kills) >= MIN_KILLS and mid_write > 0:
      mode = "finish"
    # Saves at or below `floor` may find a temporary directory a killed run left behind.
    floor = max([expected or 0] + [_step_of(n) for n in _on_disk(ckpt_dir)[1]])
    reached = max(expected or 0, _last_logged_step(workdir))
    out_path = tmp_path / f"stdout{launch}.txt"
    with open(out_path, "w") as out:
      p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    alive = _await_kill_point(p, mode, rng, workdir, reached, floor)
    if alive:
      p.send_signal(signal.SIGKILL)
    rc = p.wait(timeout=120)
    alive = alive and rc != 0  # it may have finished just before the signal
    text = open(out_path).read()
    m = re.search(r"resuming from \S+/ckpt/(\d+) \(step (\d+) of \d+\)", text)
    if m:  # the restart picked the newest complete checkpoint, never a partial one
      assert int(m.group(1)) == int(m.group(2)) == expected, (launch, text, kills)
      resumed.append(expected)
    else:
      assert expected is None or rc != 0, (launch, text)  # only a kill before it printed
    if not alive:
      assert rc == 0, text
      break
    assert rc == -signal.SIGKILL, (rc, text)
    done, partial = _on_disk(ckpt_dir)
    writing = [_step_of(n) for n in partial if _step_of(n) > floor]
    if mode == "checkpoint" and writing:
      mid_write += 1
      assert max(writing) not in done  # killed before it was finalized
    kills.append((mode, _last_logged_step(workdir), done, partial))
    print(f"launch {launch} ({time.monotonic() - t0:.1f} s): killed ({mode}) after step"
          f" {kills[-1][1]}; on disk {done}, unfinished {partial}")
    assert all(s % CKPT_EVERY == 0 for s in done), done
    expected = max(done) if done else None
  else:
    pytest.fail(f"did not finish after {MAX_LAUNCHES} launches: {kills}")

  assert len(kills) >= MIN_KILLS and mid_write >= 1, kills
  assert any(r is not None and r > 0 for r in resumed), resumed
  done, partial = _on_disk(ckpt_dir)
  assert done[-1] == STEPS and not partial, (done, partial)

  print(f"finished after {len(kills)} kills ({time.monotonic() - t0:.1f} s)")
  got = _restore_raw(ckpt_dir, STEPS)
  want = _restore_raw(os.path.join(ref_dir, "ckpt"), STEPS)
  assert got.keys() == want.keys() and any(k.startswith("model.") for k in want)
  for k in want:  # parameters, momentum, step counters: all of it
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The log is continued, not duplicated: every step's loss once, the same as uninterrupted.
  assert _train_losses(workdir) == _train_losses(ref_dir)
  assert [s for s, _ in _train_losses(ref_dir)] == list(range(1, STEPS + 1))


def test_unfinished_save_is_ignored_then_deleted(tmp_path):
  """A killed save's ``<step>.orbax-checkpoint-tmp`` is never restored; the next start drops it."""
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(1)}
  ck = ckpt_lib.Checkpointer(str(tmp_path), {"width": 3})
  ck.save(1, tree)
  ck.close()
  # What a kill mid-save leaves: a step written (here: completely) but never renamed.
  shutil.copytree(tmp_path / "1", tmp_path / f"2{TMP}")
  ck = ckpt_lib.Checkpointer(str(tmp_path), {"width": 3})
  assert ck.latest_step() == 1
  np.testing.assert_array_equal(ck.restore(1, tree)["w"], tree["w"])
  ck.save(3, {**tree, "step": np.int64(3)})
  ck.wait()
  assert sorted(os.listdir(tmp_path)) == ["1", "3"]
  ck.close()
