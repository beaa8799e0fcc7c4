"""What the GPT example records: ``log.jsonl``, the norms of every matrix, the loss plot.

``log.jsonl`` holds one JSON record per line: a ``config`` record first, then
``train`` records (``step``, ``loss``, ``lr``, ``tokens_per_s``) and ``eval``
records (``step``, ``val_loss``, ``output_norm`` and the ``<path>/<norm>``
entries of :func:`norm_reporter`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

import optax_lmo as ol


class Log:
  """``log.jsonl``: appends records; on resume drops those past the restored step.

  ``active=False`` (processes other than 0) neither reads nor writes the file.
  """

  def __init__(self, path: str, keep_until: int | None, active: bool = True):
    self.path, self.active = path, active
    if not active:
      return
    kept = []
    if keep_until is not None and os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            r = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut short by a crash
          if r.get("step", 0) <= keep_until:
            kept.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
      f.writelines(kept)

  def write(self, **record) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


def norm_reporter(rules: ol.Rules) -> Callable[[nnx.Module], dict[str, float]]:
  """``model -> optax_lmo.contrib.norm_report`` of its matrices, ``"<path>/<norm>"`` to a float.

  The output head's ``head/kernel/rms_to_inf`` (the [NT] output norm
  ``sqrt(d_in) max_i ||W_out[:, i]||``) comes first, then its other norms, then
  every other matrix's ``rms_to_rms``, ``one_to_rms``, ``rms_to_inf`` and
  ``sup``; vectors (RMSNorm gains) are skipped. One compiled call per report.
  """
  order: list[str] = []

  @jax.jit
  def values(params):
    out = ol.contrib.norm_report(params, rules)
    order[:] = list(out)  # recorded while tracing: a dict returned by jit comes back sorted
    return tuple(out.values())

  def report(model: nnx.Module) -> dict[str, float]:
    got = values(nnx.state(model, nnx.Param))
    return {k: np.asarray(v).tolist() for k, v in zip(order, got, strict=True)}

  return report


def plot(records: list[dict], path: str, unigram: float, title: str,
         radius: float | None = None) -> None:
  """Train/validation loss against step (with the unigram baseline) and the output norm.

  ``radius``: the output layer's norm-ball radius, drawn when the optimizer keeps
  the weights inside it (constrained Scion).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = [r for r in records if r.get("kind") == "train"]
  evals = [r for r in records if r.get("kind") == "eval"]
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
  ax0.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train")
  ax0.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
  ax0.axhline(unigram, color="gray", ls="--", label=f"unigram baseline ({unigram:.2f})")
  ax0.set(xlabel="step", ylabel="loss (nats / char)", title=title)
  ax0.legend()
  ax1.plot([r["step"] for r in evals], [r["output_norm"] for r in evals], "o-")
  if radius is not None:
    ax1.axhline(radius, color="gray", ls="--", label=f"Scion radius ({radius:g})")
    ax1.legend()
  top = 1.15 * max([r["output_norm"] for r in evals] + [radius or 0.0])
  ax1.set(xlabel="step", ylabel=r"$\|W_{out}\|_{RMS\to\infty}$", ylim=(0, top),
          title="output-layer norm")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def size(params) -> int:
  """The number of parameters in a tree of arrays."""
  return sum(x.size for x in jax.tree.leaves(params))


def summary(name: str, out: dict, seconds: float) -> str:
  """What the command prints at the end, from the summary ``train`` returns."""
  where = "fresh" if out["resumed_from"] is None else f"resumed from step {out['resumed_from']}"
  lines = [
      f"\n{name}: {out['step']} steps ({where}) in {seconds:.0f} s",
      f"  final validation loss   {out['val_loss']:.4f} nats/char",
      f"  unigram baseline        {out['unigram']:.4f} nats/char (train-split character entropy)",
      f"  output norm RMS->inf    {out['output_norm']:.3g}",
  ]
  if out["plot"]:
    lines.append(f"  loss curve              {out['plot']}")
  lines.append(f"  checkpoint              {out['checkpoint']}")
  lines.append(f"  log                     {os.path.join(out['workdir'], 'log.jsonl')}")
  return "\n".join(lines)
