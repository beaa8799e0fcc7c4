"""Train the character-level GPT with Scion (or Muon, AdamW, optax's Muon) on CPU or GPU.

  python -m examples.gpt.train --preset demo          # `make demo`: ~2 minutes on 2 CPU cores
  python -m examples.gpt.train --optimizer muon --steps 2000 --workdir runs/muon
  python -m examples.gpt.train --help                 # every flag
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m examples.gpt.train --mesh data=2,fsdp=4   # sharded over 8 devices (see mesh.py)

Writes to ``--workdir``: ``log.jsonl`` (one JSON record per log point and per
evaluation), ``loss.png`` (loss curves and the output-layer norm) and ``ckpt/``
(orbax checkpoints). Running the same command again resumes from the latest
checkpoint; a checkpoint written by other flags is refused. ``--preset demo``
starts fresh every time unless ``--resume`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_lmo
from examples.gpt import checkpoint as ckpt_lib
from examples.gpt import data as data_lib
from examples.gpt import mesh as mesh_lib
from examples.gpt import model as model_lib
from optax_lmo import norms

OPTIMIZERS = ("scion", "unconstrained_scion", "muon", "adamw", "optax_muon")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run depends on; each field is a command-line flag (``--eval-every``)."""

  preset: str | None = None  # a named configuration ("demo"); explicit flags override it
  optimizer: str = "scion"  # optax_muon is optax.contrib.muon, the peer baseline
  init: str = "scion"  # scion: each leaf from its norm's init x radius; standard: Flax
  lr: float | None = None  # peak learning rate; None: the optimizer's default (listed below)
  adam_lr: float = 3e-3  # AdamW learning rate of the non-matrix group under muon and optax_muon
  momentum: float | None = None  # momentum alpha = 1 - beta; None: 0.1 (muon, optax_muon: 0.05)
  weight_decay: float = 0.0  # decoupled decay (unconstrained_scion, muon, adamw); scion: unused
  schedule: str = "linear_decay"  # linear_decay: constant, then to 0 over the last --decay-frac
  decay_frac: float = 0.3  # fraction of the steps spent decaying the learning rate (linear_decay)
  warmup: int = 0  # steps of linear warmup from 0 to the peak learning rate
  steps: int = 1000  # total optimizer steps
  batch: int = 32  # sequences per step
  seq: int = 128  # tokens per sequence (context length)
  width: int = 128  # model width d
  depth: int = 4  # transformer blocks
  heads: int = 4  # attention heads (divides width)
  rotary: bool = True  # rotary positions (--no-rotary: a learned position table pos_embed)
  scale_gelu: bool = True  # scale the GELU output by sqrt(2) to keep its variance
  embed_radius: float = 1.0  # ColNorm radius of the embedding (Scion rules and scion init)
  hidden_radius: float = 3.0  # Spectral radius of the hidden matrices (Scion rules and scion init)
  output_radius: float = 10.0  # radius of the output head (Scion rules and scion init)
  output_norm: str = "rownorm"  # output-head norm: rownorm (RMS->inf) or sign (1->inf)
  polar: str = "auto"  # polar-factor method of the spectral LMOs (auto: the library's choice)
  dtype: str = "float32"  # activation dtype (parameters and optimizer state stay float32)
  eval_every: int = 100  # evaluate on the validation split every this many steps (and at the end)
  eval_batches: int = 8  # validation batches per evaluation (fixed windows of the split)
  log_every: int = 10  # steps between train-loss records in log.jsonl and progress-bar updates
  ckpt_every: int = 200  # save a checkpoint every this many steps (and at the end)
  keep_ckpts: int = 2  # checkpoints kept on disk (oldest deleted first)
  workdir: str = "runs/gpt"  # where log.jsonl, loss.png and ckpt/ go
  data: str | None = None  # a UTF-8 text file; default: pydoc_data.topics (ships with Python)
  val_frac: float = 0.1  # the last fraction of the text held out for validation
  seed: int = 0  # seeds the initialization and the batch order
  resume: bool | None = None  # resume from --workdir/ckpt; None: yes, except with --preset demo
  stop_after: int | None = None  # stop at this step as if interrupted (saves a checkpoint first)
  progress: bool = True  # show a tqdm progress bar
  plot: bool = True  # write loss.png at the end
  mesh: str | None = None  # device mesh, e.g. data=2,fsdp=4 (axes data, fsdp, tp; see mesh.py)
  coordinator: str | None = None  # multi-process: HOST:PORT of process 0 (jax.distributed)
  num_processes: int = 1  # multi-process: how many processes run this command
  process_id: int = 0  # multi-process: this process's index (process 0 writes the log)


CHOICES = {
    "preset": ("demo",),
    "optimizer": OPTIMIZERS,
    "init": ("scion", "standard"),
    "schedule": ("constant", "linear_decay"),
    "output_norm": ("rownorm", "sign"),
    "polar": ("auto", "newton_schulz", "gram_newton_schulz", "svd"),
    "dtype": ("float32", "bfloat16"),
}

# Peak learning rates: the best of a powers-of-2 (or 1-3-10) sweep of 300-step demo runs.
DEFAULT_LR = {
    "scion": 2**-7,
    "unconstrained_scion": 2**-7,
    "muon": 0.04,
    "adamw": 3e-3,
    "optax_muon": 0.04,
}

PRESETS: dict[str, dict[str, Any]] = {
    # ~2-4 minutes on a 2-core CPU; ends well below the unigram baseline.
    "demo": dict(steps=800, batch=32, seq=64, width=128, depth=4, heads=4, eval_every=100,
                 eval_batches=8, ckpt_every=200, workdir="runs/demo"),
}

# Fields that do not change the computation: a checkpoint may be resumed across them. The
# mesh and process layout change only where numbers are computed (results agree to float
# tolerance), so a checkpoint resumes on another mesh.
RUN_CONTROL = ("preset", "eval_every", "eval_batches", "log_every", "ckpt_every", "keep_ckpts",
               "workdir", "resume", "stop_after", "progress", "plot", "mesh", "coordinator",
               "num_processes", "process_id")


# ---- command line ----------------------------------------------------------------------------


def _field_help(cls) -> dict[str, str]:
  """The trailing ``# comment`` of each field in ``cls``'s source: the one help text."""
  out = {}
  for line in inspect.getsource(cls).splitlines():
    m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
    if m:
      out[m.group(1)] = m.group(2).strip()
  return out


def parse_args(argv: list[str] | None = None) -> TrainConfig:
  """``TrainConfig`` from the command line: defaults, then ``--preset``, then explicit flags."""
  helps = _field_help(TrainConfig)
  parser = argparse.ArgumentParser(
      prog="python -m examples.gpt.train",
      description=__doc__.split("\n\n")[0],
      epilog=f"Default learning rates: {DEFAULT_LR}. Presets: {PRESETS}.",
  )
  for f in dataclasses.fields(TrainConfig):
    flag = "--" + f.name.replace("_", "-")
    help_ = f"{helps[f.name]} (default: {f.default})".replace("%", "%%")
    kw: dict[str, Any] = dict(dest=f.name, help=help_, default=argparse.SUPPRESS)
    base = f.type.replace(" | None", "")
    if base == "bool":
      kw["action"] = argparse.BooleanOptionalAction
    else:
      kw["type"] = {"int": int, "float": float, "str": str}[base]
    if f.name in CHOICES:
      kw["choices"] = CHOICES[f.name]
    elif base != "bool":
      kw["metavar"] = "PATH" if f.name in ("workdir", "data") else base.upper()
    parser.add_argument(flag, **kw)
  given = vars(parser.parse_args(argv))
  return make_config(**given)


def make_config(**overrides) -> TrainConfig:
  """``TrainConfig`` with the preset (if any) applied under ``overrides``."""
  preset = overrides.get("preset")
  if preset is not None and preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}.")
  fields = dict(PRESETS.get(preset, {}))
  fields.update(overrides)
  return TrainConfig(**fields)


def resolve(cfg: TrainConfig) -> TrainConfig:
  """``cfg`` with the optimizer-dependent defaults (``lr``, ``momentum``) filled in."""
  muon_like = cfg.optimizer in ("muon", "optax_muon")
  return dataclasses.replace(
      cfg,
      lr=cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer],
      momentum=cfg.momentum if cfg.momentum is not None else (0.05 if muon_like else 0.1),
  )


def _check(cfg: TrainConfig) -> None:
  for name, allowed in CHOICES.items():
    v = getattr(cfg, name)
    if v is not None and v not in allowed:
      raise ValueError(f"{name}={v!r}; choose from {allowed}.")
  for name in ("steps", "batch", "seq", "width", "depth", "heads", "eval_every", "eval_batches",
               "log_every", "ckpt_every", "keep_ckpts", "num_processes"):
    if getattr(cfg, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
  if not 0.0 <= cfg.decay_frac <= 1.0:
    raise ValueError(f"decay_frac must be in [0, 1], got {cfg.decay_frac}.")
  if not 0 <= cfg.process_id < cfg.num_processes:
    raise ValueError(f"process_id must be in [0, {cfg.num_processes}), got {cfg.process_id}.")
  sizes = mesh_lib.parse(cfg.mesh)
  split = math.prod(sizes.get(a, 1) for a in mesh_lib.BATCH_AXES)
  if cfg.batch % split:
    raise ValueError(f"batch={cfg.batch} does not split over the mesh's data x fsdp = {split} "
                     f"devices; use a multiple of {split}.")


# ---- optimizer -------------------------------------------------------------------------------


def make_schedule(cfg: TrainConfig, peak: float) -> optax.Schedule:
  """Linear warmup, constant, then (``linear_decay``) linear decay to 0 at the last step."""
  decay_steps = int(round(cfg.decay_frac * cfg.steps)) if cfg.schedule == "linear_decay" else 0
  decay_start = cfg.steps - decay_steps

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    warm = jnp.minimum(1.0, (t + 1.0) / cfg.warmup) if cfg.warmup > 0 else 1.0
    decay = 1.0
    if decay_steps > 0:
      decay = jnp.clip((cfg.steps - t) / decay_steps, 0.0, 1.0)
      decay = jnp.where(t < decay_start, 1.0, decay)
    return peak * warm * decay

  return schedule


def _optax_muon_dims(params):
  """Peer baseline routing: hidden 2-D kernels to Muon; embeddings, head and gains to AdamW."""

  def dims(path, x):
    name = ckpt_lib.leaf_name(path)
    if x.ndim != 2 or re.search(r"(^|/)(pos_)?embed/|(^|/)head/", name):
      return None
    return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)

  return jax.tree_util.tree_map_with_path(dims, params)


def make_optimizer(cfg: TrainConfig, gcfg: model_lib.GPTConfig) -> optax.GradientTransformation:
  """The ``--optimizer`` with its schedule and the model's parameter rules."""
  cfg = resolve(cfg)
  lr, adam_lr, alpha = make_schedule(cfg, cfg.lr), make_schedule(cfg, cfg.adam_lr), cfg.momentum
  polar = None if cfg.polar == "auto" else optax_lmo.Polar(method=cfg.polar)
  if cfg.optimizer == "scion":
    return optax_lmo.scion(lr, rules=model_lib.rules(gcfg), momentum=alpha, polar=polar)
  if cfg.optimizer == "unconstrained_scion":
    return optax_lmo.unconstrained_scion(lr, rules=model_lib.rules(gcfg), momentum=alpha,
                                         weight_decay=cfg.weight_decay, polar=polar)
  if cfg.optimizer == "muon":
    return optax_lmo.muon(lr, beta=1 - alpha, weight_decay=cfg.weight_decay,
                          adam_learning_rate=adam_lr, polar=polar)
  if cfg.optimizer == "optax_muon":
    return optax.contrib.muon(lr, beta=1 - alpha, weight_decay=cfg.weight_decay,
                              adam_learning_rate=adam_lr,
                              muon_weight_dimension_numbers=_optax_muon_dims)
  return optax.adamw(lr, b1=1 - alpha, weight_decay=cfg.weight_decay)


# ---- training --------------------------------------------------------------------------------


def _loss(model: model_lib.GPT, x_BxL, y_BxL):
  logits_BxLxV = model(x_BxL)
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, y_BxL).mean()


@nnx.jit
def train_step(model, optimizer, x_BxL, y_BxL):
  # gathered: FSDP's whole weights for the forward pass (the model itself without a mesh)
  loss, grads = nnx.value_and_grad(_loss)(mesh_lib.gathered(model), x_BxL, y_BxL)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_step(model, x_BxL, y_BxL):
  return _loss(mesh_lib.gathered(model), x_BxL, y_BxL)


@nnx.jit
def _weight_norms(model: model_lib.GPT) -> dict[str, jax.Array]:
  model = mesh_lib.gathered(model)
  hidden = [
      norms.Spectral().norm(m.kernel[...])
      for b in model.blocks for m in (b.attn.qkv, b.attn.out, b.mlp.fc_in, b.mlp.fc_out)
  ]
  return {
      "output_norm": norms.RowNorm().norm(model.head.kernel[...]),
      "embed_norm": norms.ColNorm().norm(model.embed.embedding[...]),
      "hidden_norm_max": jnp.max(jnp.stack(hidden)),
  }


def weight_norms(model: model_lib.GPT) -> dict[str, float]:
  """The [NT] output norm ``||W_out||_{RMS->inf}`` plus the embedding and largest hidden norms.

  ``output_norm = sqrt(d_in) max_i ||W_out[:, i]||_2`` (Flax layout, head kernel
  ``(d, vocab)``); ``embed_norm`` is ColNorm (1 -> RMS), ``hidden_norm_max`` the
  largest scaled spectral norm (RMS -> RMS) over the block matrices.
  """
  wn = _weight_norms(model)  # jit returns the keys sorted; the output norm goes first
  return {k: float(wn[k]) for k in ("output_norm", "embed_norm", "hidden_norm_max")}


def norm_reporter(rules: optax_lmo.Rules) -> Callable[[model_lib.GPT], dict[str, float]]:
  """``model -> optax_lmo.norm_report`` of its matrices, ``"<path>/<norm>"`` to a float.

  The output head's ``head/kernel/rms_to_inf`` (the [NT] output norm) comes first,
  then its other norms, then every other matrix's ``rms_to_rms``, ``one_to_rms``,
  ``rms_to_inf`` and ``sup``; vectors (RMSNorm gains) are skipped. One compiled
  call per report (op by op it took seconds on a mesh).
  """
  order: list[str] = []

  @jax.jit
  def values(params):
    out = optax_lmo.norm_report(params, rules)
    order[:] = list(out)  # recorded while tracing: a dict returned by jit comes back sorted
    return tuple(out.values())

  def report(model: model_lib.GPT) -> dict[str, float]:
    got = values(nnx.state(model, nnx.Param))
    return {k: np.asarray(v).tolist() for k, v in zip(order, got, strict=True)}

  return report


def evaluate(model, data: data_lib.Dataset, cfg: TrainConfig, mesh=None) -> float:
  losses = [
      float(eval_step(model, mesh_lib.put_batch(x, mesh), mesh_lib.put_batch(y, mesh)))
      for x, y in data_lib.val_batches(data, batch=cfg.batch, seq=cfg.seq,
                                       max_batches=cfg.eval_batches)
  ]
  return float(np.mean(losses))


class _Log:
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
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


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


def _resume_config(cfg: TrainConfig, data: data_lib.Dataset) -> dict:
  """What a checkpoint must agree on to be resumed: the computation, not the bookkeeping.

  The text is identified by its fingerprint, not by the path it was read from.
  """
  out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL + ("data",)}
  out.update(vocab_size=data.vocab_size, data_fingerprint=data.fingerprint)
  return out


def train(cfg: TrainConfig, *, on_eval: Callable[[int, float, Any], None] | None = None) -> dict:
  """Trains (or resumes) the run ``cfg`` describes; returns its summary.

  ``on_eval(step, val_loss, model)``, if given, is called after every evaluation
  (``benchmarks/stability.py`` checks the weights there).

  Returns:
    A dict with ``step`` (the last step done), ``val_loss`` (validation loss at
    that step), ``unigram`` (entropy of the train split's character
    distribution, nats), ``output_norm``, ``params`` (numpy copies of the model
    parameters, by path), ``resumed_from`` (step or ``None``), ``workdir``,
    ``plot`` and ``checkpoint`` paths.

  Raises:
    examples.gpt.checkpoint.CheckpointError: the checkpoint to resume from was
      written by another configuration, does not match the state, or is corrupt.
  """
  _check(cfg)
  cfg = resolve(cfg)
  mesh_lib.init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id, cfg.mesh)
  data = data_lib.load(cfg.data, val_frac=cfg.val_frac)
  os.makedirs(cfg.workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(os.path.join(cfg.workdir, "ckpt"), _resume_config(cfg, data),
                               keep=cfg.keep_ckpts)
  try:
    with mesh_lib.use(mesh_lib.make_mesh(cfg.mesh)):  # the LMO and mesh.gathered find it here
      return _train(cfg, data, ckpt, on_eval)
  finally:
    ckpt.close()


def _train(cfg: TrainConfig, data: data_lib.Dataset, ckpt: ckpt_lib.Checkpointer,
           on_eval: Callable[[int, float, Any], None] | None = None) -> dict:
  unigram = data_lib.unigram_entropy(data.train_N, data.vocab_size)
  resume = cfg.resume if cfg.resume is not None else cfg.preset != "demo"
  latest = ckpt.latest_step()
  if latest is not None and resume:
    ckpt.check(latest)  # a mismatched configuration fails here, before anything is compiled

  gcfg = model_lib.GPTConfig(
      vocab_size=data.vocab_size, seq_len=cfg.seq, width=cfg.width, depth=cfg.depth,
      heads=cfg.heads, rotary=cfg.rotary, scale_gelu=cfg.scale_gelu, init=cfg.init,
      embed_radius=cfg.embed_radius, hidden_radius=cfg.hidden_radius,
      output_radius=cfg.output_radius, output_norm=cfg.output_norm, dtype=cfg.dtype,
  )
  tx = make_optimizer(cfg, gcfg)
  norm_report = norm_reporter(model_lib.rules(gcfg))  # logged at each evaluation

  @nnx.jit  # one compiled initializer instead of many small eager ops
  def create():
    model = model_lib.GPT(gcfg, rngs=nnx.Rngs(params=cfg.seed))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  mesh, lead = mesh_lib.make_mesh(cfg.mesh), mesh_lib.is_lead()
  model, optimizer = create() if mesh is None else mesh_lib.create(create, mesh)
  step_fn = train_step if mesh is None else mesh_lib.jit_step(train_step, model, optimizer, mesh,
                                                              cfg.batch)
  if lead and cfg.optimizer in ("scion", "unconstrained_scion", "muon"):  # what each leaf gets
    rows = optax_lmo.describe(tx, nnx.state(model, nnx.Param), verbose=False)
    with open(os.path.join(cfg.workdir, "describe.txt"), "w") as f:
      f.write(str(rows) + "\n")
  rng_key = jax.random.key_data(jax.random.key(cfg.seed))  # the root key, stored with the state

  def state_tree(step: int):
    return {
        "model": nnx.state(model, nnx.Param),
        "optimizer": nnx.state(optimizer),
        "train": {"step": np.int64(step), "data_step": np.int64(step), "rng": rng_key},
    }

  start, resumed_from = 0, None
  if latest is not None and resume:
    restored = ckpt.restore(latest, state_tree(0))
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    start = resumed_from = int(restored["train"]["step"])
    print(f"resuming from {cfg.workdir}/ckpt/{latest} (step {start} of {cfg.steps})", flush=True)
    where = f"checkpoint {ckpt.directory}/{latest}"
    if not np.array_equal(restored["train"]["rng"], rng_key):
      raise ckpt_lib.CheckpointError(f"{where}: its RNG key does not come from --seed {cfg.seed}.")
    if not start == int(restored["train"]["data_step"]) == int(optimizer.step[...]) == latest:
      raise ckpt_lib.CheckpointError(f"{where}: its step counters disagree; it is corrupt.")
  elif latest is not None:
    print(f"starting fresh: replacing the checkpoints in {cfg.workdir}/ckpt", flush=True)
    for s in ckpt.manager.all_steps():
      ckpt.manager.delete(s)
  log = _Log(os.path.join(cfg.workdir, "log.jsonl"), keep_until=resumed_from, active=lead)
  if resumed_from is None:
    log.write(kind="config", step=0, config=dataclasses.asdict(cfg), vocab_size=data.vocab_size,
              data=data.source, unigram=unigram, n_params=_n_params(model))

  val_loss = out_norm = float("nan")

  def do_eval(step: int, record: bool = True) -> None:
    nonlocal val_loss, out_norm
    val_loss = evaluate(model, data, cfg, mesh)
    wn = weight_norms(model)
    out_norm = wn["output_norm"]
    if on_eval is not None:
      on_eval(step, val_loss, model)
    if record:
      log.write(kind="eval", step=step, val_loss=val_loss, **wn,
                **norm_report(model))

  from tqdm.auto import tqdm

  lr_at = make_schedule(cfg, cfg.lr)
  stop = min(cfg.steps, cfg.stop_after) if cfg.stop_after is not None else cfg.steps
  step, tokens, t_mark = start, 0, time.perf_counter()
  if start == 0:
    do_eval(0)
  with tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead), dynamic_ncols=True,
            desc=cfg.optimizer, file=sys.stdout) as bar:
    while step < stop:
      x_BxL, y_BxL = data_lib.train_batch(data, seed=cfg.seed, step=step, batch=cfg.batch,
                                          seq=cfg.seq)
      loss = step_fn(model, optimizer, mesh_lib.put_batch(x_BxL, mesh),
                     mesh_lib.put_batch(y_BxL, mesh))
      step, tokens = step + 1, tokens + x_BxL.size
      bar.update(1)
      if step % cfg.log_every == 0 or step == stop:
        loss_f = float(loss)  # waits for the step
        tps = tokens / (time.perf_counter() - t_mark)
        log.write(kind="train", step=step, loss=loss_f, lr=float(lr_at(step - 1)),
                  tokens_per_s=tps)
        bar.set_postfix(loss=f"{loss_f:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tps:,.0f}")
      if step % cfg.eval_every == 0 or step == cfg.steps:
        do_eval(step)
        bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{val_loss:.3f}")
      if step % cfg.ckpt_every == 0 or step == stop:
        ckpt.save(step, state_tree(step))
      if step % cfg.log_every == 0:
        tokens, t_mark = 0, time.perf_counter()  # throughput excludes the first compile
  ckpt.wait()
  if math.isnan(val_loss) or (step != cfg.steps and step % cfg.eval_every):
    do_eval(step, record=step != start)  # a stop between evaluations, or nothing left to do

  png = os.path.join(cfg.workdir, "loss.png")
  if cfg.plot and lead:
    plot(log.read(), png, unigram, f"{cfg.optimizer}, {_n_params(model) / 1e6:.2f}M params",
         radius=cfg.output_radius if cfg.optimizer == "scion" else None)
  params = {ckpt_lib.leaf_name(p): mesh_lib.to_host(x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
  latest = ckpt.latest_step()
  return dict(step=step, val_loss=val_loss, unigram=unigram, output_norm=out_norm, params=params,
              resumed_from=resumed_from, workdir=cfg.workdir, plot=png if cfg.plot else None,
              checkpoint=None if latest is None else os.path.join(cfg.workdir, "ckpt", str(latest)))


def _n_params(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def main(argv: list[str] | None = None) -> None:
  cfg = parse_args(argv)
  t0 = time.perf_counter()
  try:
    out = train(cfg)
  except ckpt_lib.CheckpointError as e:
    raise SystemExit(f"error: {e}") from None
  if not mesh_lib.is_lead():
    return
  where = f"resumed from step {out['resumed_from']}" if out["resumed_from"] is not None else "fresh"
  print(f"\n{cfg.optimizer}: {out['step']} steps ({where}) in {time.perf_counter() - t0:.0f} s")
  print(f"  final validation loss   {out['val_loss']:.4f} nats/char")
  print(f"  unigram baseline        {out['unigram']:.4f} nats/char (train-split character entropy)")
  print(f"  output norm RMS->inf    {out['output_norm']:.3g}")
  if out["plot"]:
    print(f"  loss curve              {out['plot']}")
  print(f"  checkpoint              {out['checkpoint']}")
  print(f"  log                     {os.path.join(out['workdir'], 'log.jsonl')}")


if __name__ == "__main__":
  main()
