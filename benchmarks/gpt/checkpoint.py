"""Strict orbax checkpoints for the GPT example: restore all of it, exactly, or refuse loudly.

A checkpoint step holds two items: ``state`` (a flat dict ``path -> array`` of the
model parameters, the optimizer state and the training position) and ``meta``
(JSON: the configuration that produced it and a checksum per leaf). Restoring
checks, before touching the model, that

1. the configuration matches (``width``, ``depth``, ``vocab_size``, ``optimizer``,
   ``dtype``, ...): a mismatch names every differing field;
2. the stored tree has the same leaf paths, shapes and dtypes as the target;
3. every restored leaf has its saved checksum (catches corrupt bytes).

Arrays laid out over a device mesh are written shard by shard by the processes
that hold them (orbax's own sharded save) and read back straight into the
layout of the target, which may be another mesh, or one device: a checkpoint
written on 8 devices restores onto 4 or 1, and back. A checksum covers a leaf's
whole value, so it does not depend on the layout; for an array no single
process holds whole (multi-process runs) every process gathers it to compute
the checksum: a full copy per host, cheap at the example's sizes (a large
model would checksum per shard instead).

Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only once all of it is written, so the latest step is always a
complete one; a damaged one is an error, never silently skipped. A process
killed mid-save leaves that temporary directory behind: the next start deletes
it (``tests/harness/test_crash_resume.py`` kills the example mid-save and checks).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

FORMAT = 2  # bump when the layout of ``state`` or ``meta`` changes


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored as asked: mismatched or corrupt."""


def leaf_name(path) -> str:
  """``"model/blocks/0/attn/qkv/kernel"`` from a key path (NNX ``.value`` dropped)."""
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  if parts and parts[-1] in ("value", "raw_value"):
    parts = parts[:-1]
  return "/".join(parts)


def flatten(tree) -> tuple[dict[str, Any], Any]:
  """``({name: leaf}, treedef)`` with orbax-safe names (``.`` separated)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = {leaf_name(p).replace("/", "."): x for p, x in flat}
  if len(out) != len(flat):
    raise ValueError("two leaves of the training state map to the same checkpoint name.")
  return out, treedef


def _on_mesh(x) -> bool:
  """A ``jax.Array`` laid out over a device mesh: orbax saves and restores it by shards."""
  return isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)


def _value(x) -> np.ndarray:
  """The whole value of ``x`` on the host (gathered when other processes hold parts of it)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _checksum(x) -> str:
  a = np.ascontiguousarray(_value(x))
  return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def _describe(x) -> str:
  return f"{np.dtype(x.dtype).name}{list(x.shape)}"


class Checkpointer:
  """Saves and strictly restores the training state under ``directory``."""

  def __init__(self, directory: str, config: dict, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.config = config
    # cleanup_tmp_directories: remove the unfinished saves of a killed run on start.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def start(self, *, resume: bool) -> int | None:
    """The step to resume from, its configuration checked (:meth:`check`); ``None`` if none.

    With ``resume=False`` every saved step is deleted first: the run starts over.
    """
    latest = self.latest_step()
    if latest is not None and not resume:
      print(f"starting fresh: replacing the checkpoints in {self.directory}", flush=True)
      for s in self.manager.all_steps():
        self.manager.delete(s)
      return None
    if latest is not None:
      self.check(latest)
    return latest

  def save(self, step: int, tree) -> None:
    """Writes ``tree`` (any pytree of arrays) as step ``step`` (asynchronously)."""
    flat, _ = flatten(tree)
    flat = {k: v if _on_mesh(v) else np.asarray(v) for k, v in flat.items()}
    meta = {
        "format": FORMAT,
        "step": int(step),
        "config": self.config,
        "leaves": {k: [_describe(v), _checksum(v)] for k, v in flat.items()},
    }
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)),
        force=True,
    )

  def check(self, step: int) -> dict:
    """Reads the metadata of ``step`` and checks its configuration; returns the metadata.

    Cheap (no arrays are read), so a mismatch is reported before any model is built.
    """
    where = f"checkpoint {os.path.join(self.directory, str(step))}"
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta["meta"]
    except Exception as e:
      raise CheckpointError(
          f"{where}: its metadata is unreadable ({type(e).__name__}: {e}). The checkpoint is"
          " corrupt or was not written by this example; delete it, or start fresh with"
          " --no-resume (or another --workdir)."
      ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
      raise CheckpointError(f"{where}: metadata has an unknown format; it was not written by"
                            " this version of the example.")
    self._check_config(where, meta["config"])
    return meta

  def restore(self, step: int, target):
    """The checkpoint at ``step`` in the structure of ``target`` (arrays or ShapeDtypeStructs).

    Every leaf comes back with the sharding of its target leaf (when the target
    is a ``jax.Array`` or a ``ShapeDtypeStruct`` with one), whatever mesh wrote it.
    """
    where = f"checkpoint {os.path.join(self.directory, str(step))}"
    meta = self.check(step)
    target_flat, treedef = flatten(target)
    abstract = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=getattr(v, "sharding", None))
                for k, v in target_flat.items()}
    self._check_leaves(where, {k: v[0] for k, v in meta["leaves"].items()}, abstract)
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:
      raise CheckpointError(
          f"{where}: the arrays are unreadable ({type(e).__name__}: {str(e)[:500]}). The"
          " checkpoint is corrupt; delete it, or start fresh with --no-resume."
      ) from e
    self._check_leaves(where, {k: _describe(v) for k, v in restored.items()}, abstract)
    bad = [k for k, v in restored.items() if _checksum(v) != meta["leaves"][k][1]]
    if bad:
      raise CheckpointError(
          f"{where}: {len(bad)} arrays do not match their saved checksums (first: {bad[0]});"
          " the checkpoint is corrupt. Delete it, or start fresh with --no-resume."
      )
    return jax.tree.unflatten(treedef, [restored[k] for k in target_flat])

  def _check_config(self, where: str, saved: dict) -> None:
    keys = sorted(set(saved) | set(self.config))
    diff = [
        f"{k} (checkpoint {saved.get(k, '<absent>')!r},"
        f" this run {self.config.get(k, '<absent>')!r})"
        for k in keys
        if saved.get(k) != self.config.get(k)
    ]
    if diff:
      raise CheckpointError(
          f"{where} was written by a different configuration: {'; '.join(diff)}. Resume with"
          " the same flags, or use another --workdir (or --no-resume to overwrite it)."
      )

  @staticmethod
  def _check_leaves(where: str, stored: dict[str, str], abstract: dict) -> None:
    want = {k: _describe(v) for k, v in abstract.items()}
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    wrong = [f"{k}: checkpoint {stored[k]}, expected {want[k]}"
             for k in want if k in stored and stored[k] != want[k]]
    if missing or extra or wrong:
      parts = []
      if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
      if extra:
        parts.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
      if wrong:
        parts.append(f"shape/dtype {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
      raise CheckpointError(f"{where} does not match the model and optimizer state: "
                            + "; ".join(parts) + ".")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
