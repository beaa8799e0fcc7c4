"""GPT checkpoints restore onto another mesh, bit for bit and in the target layout; others refused.

A checkpoint written on 8 devices (``--mesh data=2,fsdp=4``) restores onto 4
devices and onto 1, and one written on 1 device restores onto 8 (``fsdp=4,tp=2``):
every parameter and optimizer-state leaf comes back with the bits it was saved
with and with the sharding of the target. A run stopped on 8 devices resumes on
one. A checkpoint of another width, depth, optimizer or dtype is refused with a
message that names the field and both values.

The 8 devices are simulated on CPU (``--xla_force_host_platform_device_count``,
set before jax starts), so this module runs itself once as a subprocess that
prints one JSON object, as ``tests/test_sharding.py`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

import pytest
from _simulated import run_worker

N_DEVICES = 8
TINY = dict(width=32, depth=1, heads=2, batch=16, seq=32, steps=3, eval_every=100,
            eval_batches=1, ckpt_every=100, optimizer="muon", progress=False, plot=False)
MISMATCHES = {"width": 64, "depth": 2, "optimizer": "scion", "dtype": "bfloat16"}


# -- the worker (runs with 8 simulated devices) ------------------------------------


def _worker(tmp: str) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  from benchmarks.gpt import checkpoint as ckpt_lib
  from benchmarks.gpt import data as data_lib
  from benchmarks.gpt import mesh as mesh_lib
  from benchmarks.gpt import model as model_lib
  from benchmarks.gpt import train as train_lib

  assert jax.device_count() == N_DEVICES, jax.devices()
  data = data_lib.load()

  def cfg(workdir, **kw):
    return train_lib.resolve(train_lib.make_config(**{**TINY, "workdir": workdir, **kw}))

  def target(c, mesh):
    """A fresh state tree laid out on ``mesh`` (None: one device), shaped like a checkpoint."""
    gcfg = train_lib.model_config(c, data.vocab_size)
    tx = train_lib.make_optimizer(c, gcfg)

    def create():
      model = model_lib.GPT(gcfg, rngs=nnx.Rngs(params=1))  # not the saved values
      return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, opt = nnx.jit(create)() if mesh is None else mesh_lib.create(create, mesh)
    return {
        "model": nnx.state(model, nnx.Param),
        "optimizer": nnx.state(opt),
        "train": {"step": np.int64(0)},
    }

  def restore(c, step, mesh):
    """Restores ``c``'s checkpoint ``step`` onto ``mesh``; per leaf: value, sharding ok."""
    want = target(c, mesh)
    ckpt = ckpt_lib.Checkpointer(os.path.join(c.workdir, "ckpt"),
                                 train_lib.resume_config(c, data))
    try:
      got = ckpt.restore(step, want)
    finally:
      ckpt.close()
    want_flat, _ = ckpt_lib.flatten(want)
    got_flat, _ = ckpt_lib.flatten(got)
    values = {k: mesh_lib.to_host(v) for k, v in got_flat.items()}
    placed = {
        k: (not isinstance(want_flat[k], jax.Array)) or v.sharding == want_flat[k].sharding
        for k, v in got_flat.items()
    }
    split = sum(  # leaves that are really sharded on the target mesh
        isinstance(v, jax.Array) and not v.sharding.is_fully_replicated for v in got_flat.values()
    )
    return values, placed, split

  def bitwise(a: dict, b: dict) -> list[str]:
    """Keys whose arrays differ in dtype, shape or any bit."""
    return [k for k in a if a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()]

  out: dict = {"restores": {}, "refused": {}}
  devices = jax.devices()
  on8 = cfg(os.path.join(tmp, "on8"), mesh="data=2,fsdp=4")
  written8 = train_lib.train(dataclasses.replace(on8, stop_after=2))
  on1 = cfg(os.path.join(tmp, "on1"))
  written1 = train_lib.train(dataclasses.replace(on1, stop_after=2))

  readers = {
      "8to4": (on8, mesh_lib.make_mesh("fsdp=4", devices=devices[4:])),
      "8to1": (on8, None),
      "1to8": (on1, mesh_lib.make_mesh("fsdp=4,tp=2")),
  }
  restored = {}
  for name, (c, mesh) in readers.items():
    values, placed, split = restore(c, 2, mesh)
    restored[name] = values
    params = written8["params"] if c is on8 else written1["params"]
    model_keys = {k: v for k, v in values.items() if k.startswith("model.")}
    saved = {f"model.{k.replace('/', '.')}": v for k, v in params.items()}
    out["restores"][name] = {
        "params_differ": bitwise(model_keys, saved) + sorted(set(saved) ^ set(model_keys)),
        "misplaced": [k for k, ok in placed.items() if not ok],
        "sharded_leaves": split,
        "leaves": len(values),
    }
  # The optimizer state (and everything else) is the same whichever mesh it lands on.
  out["state_same_8to4_8to1"] = not bitwise(restored["8to4"], restored["8to1"])

  # A run stopped on 8 devices resumes on one.
  resumed = train_lib.train(dataclasses.replace(on8, mesh=None))
  out["resumed"] = {"from": resumed["resumed_from"], "step": resumed["step"],
                    "val_loss": resumed["val_loss"]}

  for field, value in MISMATCHES.items():
    try:
      train_lib.train(dataclasses.replace(on1, **{field: value}))
      out["refused"][field] = None
    except ckpt_lib.CheckpointError as e:
      out["refused"][field] = str(e)
  return out


# -- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    return run_worker(__file__, tmp, devices=N_DEVICES, timeout=600)


@pytest.mark.parametrize("case", ["8to4", "8to1", "1to8"])
def test_restore_onto_another_mesh_is_bitwise_and_in_target_layout(worker, case):
  r = worker["restores"][case]
  assert r["params_differ"] == [], r
  assert r["misplaced"] == [], r
  if case != "8to1":
    assert r["sharded_leaves"] > 0, r  # the target layout really splits leaves


def test_optimizer_state_is_the_same_on_every_mesh(worker):
  assert worker["state_same_8to4_8to1"]


def test_run_stopped_on_8_devices_resumes_on_one(worker):
  r = worker["resumed"]
  assert r["from"] == 2 and r["step"] == 3, r
  assert r["val_loss"] == r["val_loss"], r  # not NaN


@pytest.mark.parametrize("field", sorted(MISMATCHES))
def test_checkpoint_of_another_config_is_refused_naming_the_field(worker, field):
  msg = worker["refused"][field]
  assert msg is not None, f"a checkpoint of another {field} was restored"
  saved = TINY.get(field, {"dtype": "float32"}.get(field))
  assert f"{field} (checkpoint {saved!r}, this run {MISMATCHES[field]!r})" in msg, msg
  assert "written by a different configuration" in msg, msg


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
  print(json.dumps(_worker(sys.argv[2])))
