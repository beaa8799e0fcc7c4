"""Train the character-level GPT with Scion (or Muon, AdamW, optax's Muon) on CPU or GPU.

  python -m benchmarks.gpt.train --preset demo          # what `make demo` runs
  python -m benchmarks.gpt.train --optimizer muon --steps 2000 --workdir runs/muon
  python -m benchmarks.gpt.train --help                 # every flag
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
    python -m benchmarks.gpt.train --mesh data=2,fsdp=4   # sharded over 8 devices (see mesh.py)

Writes ``log.jsonl`` (train losses; validation losses, matrix norms, the largest attention logit),
``describe.txt`` (what the optimizer does to each parameter), ``loss.png`` and
``ckpt/`` (orbax) to ``--workdir``. The same command again resumes from the
latest checkpoint and refuses one written by other flags; a ``--preset`` run
starts over (replacing its checkpoints) unless ``--resume`` is given. A training
loss that turns non-finite stops the run with one ``error:`` line (exit status
1) before anything of that step is saved.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import optax_lmo as ol
from benchmarks.gpt import checkpoint as ckpt_lib
from benchmarks.gpt import data as data_lib
from benchmarks.gpt import flags, progressive, report
from benchmarks.gpt import mesh as mesh_lib
from benchmarks.gpt import model as model_lib
from benchmarks.gpt.flags import flag
from benchmarks.gpt.optim import (
  DEFAULT_LR,
  DEFAULT_RADII,
  LIBRARY_RADII,
  NS_COEFFS,
  NS_PRECONDITIONINGS,
  OPTIMIZERS,
  POLAR_METHODS,
  ROUTED,
  ROW_NORM,
  adaptive_stats,
  make_optimizer,
  make_schedule,
  polar_of,
  resolve,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run depends on; each field is a command-line flag (``--eval-every``)."""

  preset: str | None = flag(None, "a named configuration; explicit flags override it", ("demo",))
  optimizer: str = flag("scion", "optax_muon is optax.contrib.muon, the peer baseline", OPTIMIZERS)
  init: str | None = flag(None, "scion: norm's init x radius; rms: ol.init_params (inside the"
                          " ball, RMS-preserving at any radius); standard: Flax's; unset: rms for"
                          " scion, scion for unconstrained_scion, else standard", model_lib.INITS)
  lr: float | None = flag(None, "peak learning rate; unset: the optimizer's (listed below)")
  adam_lr: float = flag(3e-3, "AdamW learning rate of the non-matrix leaves (muon, optax_muon)")
  beta: float | None = flag(None, "momentum decay (AdamW's b1); unset: 0.9, Muons 0.95")
  weight_decay: float = flag(0.0, "decoupled weight decay (not scion: its constraint decays)")
  schedule: str = flag("linear_decay", "constant, then to 0 over --decay-frac: linearly, along"
                       " half a cosine, or as 1 - sqrt of the decay's progress; or constant",
                       ("linear_decay", "cosine_decay", "sqrt_decay", "constant"))
  decay_frac: float | None = flag(None, "fraction of the steps spent decaying the learning rate;"
                                  " unset: 0.5 for scion, else 0.3")
  warmup: int = flag(0, "steps of linear warmup from 0 to the peak learning rate")
  steps: int = flag(1000, "total optimizer steps")
  batch: int = flag(32, "sequences per step")
  seq: int = flag(128, "tokens per sequence (context length)")
  width: int = flag(128, "model width d")
  depth: int = flag(4, "transformer blocks")
  heads: int = flag(4, "attention heads (must divide --width)")
  rotary: bool = flag(True, "rotary positions (--no-rotary: a learned position table)")
  scale_gelu: bool = flag(True, "scale the GELU output by sqrt(2) to keep its variance")
  embed_radius: float = flag(1.0, "ColNorm radius of the embedding (rules and scion init)")
  hidden_radius: float | None = flag(None, "Spectral radius of the hidden matrices (rules, inits);"
                                     " unset: 3 for unconstrained_scion, else 48")
  output_radius: float | None = flag(None, "radius of the output head (rules and inits);"
                                     " unset: 10 for unconstrained_scion, else 160")
  output_norm: str = flag("rownorm", "output-head norm: RMS->inf or 1->inf", ("rownorm", "sign"))
  head_init_scale: float = flag(1.0, "the initial head kernel times this (0: a zero head)")
  blocks: str = flag("fused", "infer_rules(blocks=): the fused qkv kernel (d, 3d) as one matrix,"
                     " as q, k and v (3 blocks) or per head (3 x --heads blocks), for the rules"
                     " and the inits that read them; not adamw, optax_muon", model_lib.BLOCKS)
  nesterov: bool | None = flag(None, "Nesterov momentum (feed beta d + (1 - beta) g to the LMO);"
                              " unset: the optimizer's (on for muon, off for the Scions)")
  row_norm: bool = flag(False, "NorMuon's row normalization of the spectral directions (each"
                        " neuron's step over its running RMS); not adamw, optax_muon, hyperball")
  polar: str = flag("auto", "polar-factor method of the spectral LMOs", POLAR_METHODS)
  ns_coeffs: str = flag("polar_express", "Newton-Schulz coefficients of the polar factor",
                        NS_COEFFS)
  ns_steps: int | None = flag(None, "Newton-Schulz steps; unset: the coefficients' default (5;"
                             " aol: 4)")
  ns_precondition: str = flag("frobenius", "Newton-Schulz's input scaling: by the Frobenius norm,"
                              " or AOL's row scaling in the first step (Turbo-Muon; with"
                              " --ns-coeffs aol)", NS_PRECONDITIONINGS)
  dtype: str = flag("float32", "activation dtype (parameters: float32)", ("float32", "bfloat16"))
  drop: bool = flag(False, "Drop-Muon: each step freeze the blocks below a uniform random cutoff"
                    " (progressive.py)")
  adaptive_batch: float | None = flag(None, "norm-test tolerance ETA: accumulate micro-batches"
                                      " of --batch until it passes; --steps counts micro-batches")
  max_micro_batches: int = flag(16, "--adaptive-batch: the most micro-batches per step")
  qk_clip: float | None = flag(None, "QK-clip TAU (MuonClip): after each step, scale the query"
                               " and key weights of every head whose largest attention logit"
                               " exceeds TAU so that it is TAU (Kimi K2: 100)")
  eval_every: int = flag(100, "steps between validation evaluations (and one at the end)")
  eval_batches: int = flag(8, "validation batches per evaluation (fixed windows)")
  log_every: int = flag(10, "steps between train-loss records and progress-bar updates")
  ckpt_every: int = flag(200, "steps between checkpoints (and one at the end)")
  keep_ckpts: int = flag(2, "checkpoints kept on disk (the oldest deleted first)")
  workdir: str = flag("runs/gpt", "where log.jsonl, describe.txt, loss.png and ckpt/ go")
  data: str | None = flag(None, "a UTF-8 text file, or python-stdlib (Python's own .py files);"
                          " unset: pydoc_data.topics (ships with Python)")
  val_frac: float = flag(0.1, "the last fraction of the text, held out for validation")
  seed: int = flag(0, "seeds the initialization and the batch order")
  resume: bool | None = flag(None, "resume from --workdir/ckpt; unset: yes, but not for a preset")
  stop_after: int | None = flag(None, "stop at this step as if interrupted (checkpoints first)")
  progress: bool = flag(True, "a tqdm progress bar on stderr")
  plot: bool = flag(True, "write loss.png at the end")
  mesh: str | None = flag(None, "device mesh, e.g. data=2,fsdp=4 (axes data, fsdp, tp: mesh.py)")
  coordinator: str | None = flag(None, "multi-process: HOST:PORT of process 0")
  num_processes: int = flag(1, "multi-process: how many processes run this command")
  process_id: int = flag(0, "multi-process: this process's index (process 0 writes the log)")


PRESETS: dict[str, dict[str, Any]] = {  # demo: 2-10 minutes on 2 CPU cores
    "demo": dict(steps=800, batch=32, seq=64, width=128, depth=4, heads=4, eval_every=100,
                 eval_batches=8, ckpt_every=200, workdir="runs/demo"),
}
# Fields that leave what is computed alone (a mesh moves where): a checkpoint resumes across them.
RUN_CONTROL = ("preset", "eval_every", "eval_batches", "log_every", "ckpt_every", "keep_ckpts",
               "workdir", "resume", "stop_after", "progress", "plot", "mesh", "coordinator",
               "num_processes", "process_id", "data")
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {  # what a number must be
    **dict.fromkeys(("steps", "batch", "seq", "width", "depth", "heads", "eval_every",
                     "eval_batches", "log_every", "ckpt_every", "keep_ckpts", "num_processes",
                     "stop_after", "ns_steps"), (lambda v: v >= 1, ">= 1")),
    **dict.fromkeys(("lr", "adam_lr", "embed_radius", "hidden_radius", "output_radius",
                     "adaptive_batch", "qk_clip"),
                    (lambda v: v > 0, "> 0")),
    **dict.fromkeys(("weight_decay", "warmup", "seed", "process_id", "head_init_scale"),
                    (lambda v: v >= 0, ">= 0")),
    "beta": (lambda v: 0 <= v < 1, "in [0, 1)"), "decay_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "val_frac": (lambda v: 0 < v < 1, "in (0, 1)"),
    "max_micro_batches": (lambda v: v >= 2, ">= 2")}


def make_config(**overrides) -> TrainConfig:
  """``TrainConfig`` with the preset (if any) applied under ``overrides``."""
  return TrainConfig(**{**PRESETS.get(overrides.get("preset"), {}), **overrides})


def validate(cfg: TrainConfig) -> None:
  """Raises ``ValueError`` naming the first invalid flag of ``cfg`` and what it must be."""
  flags.check(cfg, RANGES)
  for name in ("lr", "adam_lr"):  # the step runs in float32
    value = getattr(cfg, name)
    if value is not None and not np.isfinite(np.float32(value)):
      raise ValueError(f"--{name.replace('_', '-')} {value:g} is infinite in float32, the"
                       " parameters' dtype; give one below 3.4e38.")
  model_lib.GPTConfig(width=cfg.width, heads=cfg.heads, rotary=cfg.rotary)  # heads | width
  if cfg.optimizer == "scion" and cfg.weight_decay:
    raise ValueError("--weight-decay: scion has none to set (its constraint is its decay);"
                     " use --optimizer unconstrained_scion.")
  if cfg.blocks != "fused" and cfg.optimizer not in ROUTED:
    raise ValueError(f"--blocks {cfg.blocks}: {cfg.optimizer} does not route by the"
                     f" example's rules; use it with --optimizer {', '.join(ROUTED)}, or leave"
                     " it fused.")
  if cfg.optimizer not in ROUTED and (cfg.nesterov is not None or polar_of(cfg) is not None):
    raise ValueError(f"--nesterov, --polar, --ns-coeffs, --ns-steps and --ns-precondition set"
                     f" our LMO optimizers; {cfg.optimizer} does not take them (use --optimizer"
                     f" {', '.join(ROUTED)}).")
  if cfg.row_norm and cfg.optimizer not in ROW_NORM:
    raise ValueError(f"--row-norm normalizes the spectral directions of our LMO chain;"
                     f" {cfg.optimizer} has none (use --optimizer {', '.join(ROW_NORM)}).")
  if cfg.ns_precondition == "aol" and cfg.polar == "svd":
    raise ValueError("--ns-precondition aol scales the input of Newton-Schulz; --polar svd runs"
                     " none (use --polar auto, newton_schulz or gram_newton_schulz).")
  if cfg.optimizer == "hyperball" and cfg.weight_decay:
    raise ValueError("--weight-decay: hyperball has none to set (its weights stay on the sphere"
                     " of their initial norm).")
  if cfg.optimizer == "hyperball" and cfg.adaptive_batch is not None:
    raise ValueError("--adaptive-batch scales each update by the schedule, which needs an"
                     " optimizer linear in its learning rate; hyperball's retraction is not.")
  if cfg.drop and cfg.depth < 2:
    raise ValueError("--drop freezes the blocks below a cutoff: it needs --depth >= 2.")
  if cfg.drop and cfg.adaptive_batch is not None:
    raise ValueError("--drop and --adaptive-batch do not combine (one mask per micro-batch).")
  if cfg.qk_clip is not None and (cfg.drop or cfg.adaptive_batch is not None):
    raise ValueError("--qk-clip does not combine with --drop or --adaptive-batch (it clips"
                     " after each optimizer step, from that step's forward pass).")
  if cfg.data not in (None, data_lib.PYTHON_SOURCE) and not os.path.isfile(cfg.data):
    raise ValueError(f"--data {cfg.data}: no such file.")
  try:
    text, source = data_lib.load_text(cfg.data)
  except UnicodeDecodeError as e:
    raise ValueError(f"--data {cfg.data}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
  where = source if cfg.data is None else f"--data {source}"
  data_lib.check_length(len(text), where, seq=cfg.seq, val_frac=cfg.val_frac)
  if cfg.process_id >= cfg.num_processes:
    raise ValueError(f"--process-id must be < --num-processes {cfg.num_processes}.")
  if cfg.num_processes > 1 and cfg.coordinator is None:
    raise ValueError("--num-processes > 1 needs --coordinator HOST:PORT.")
  split = math.prod(mesh_lib.parse(cfg.mesh).get(a, 1) for a in mesh_lib.BATCH_AXES)
  if cfg.batch % split:
    raise ValueError(f"--batch {cfg.batch} does not split over the mesh's data x fsdp = {split}"
                     f" devices; use a multiple of {split}.")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
  """``TrainConfig`` from the command line; an invalid flag exits 2 with an ``error:`` line."""
  parser = flags.parser(
      TrainConfig, prog="python -m benchmarks.gpt.train",
      usage="%(prog)s [--preset demo] [--FLAG VALUE ...]", description=__doc__.split("\n\n")[0],
      epilog=f"Default learning rates: {DEFAULT_LR}. Default (hidden, output) radii:"
             f" {DEFAULT_RADII}, else {LIBRARY_RADII}. Presets: {PRESETS}.")
  cfg = make_config(**vars(parser.parse_args(argv)))
  try:
    validate(cfg)
  except ValueError as e:
    parser.error(str(e))
  return cfg


def model_config(cfg: TrainConfig, vocab_size: int) -> model_lib.GPTConfig:
  """The model that ``cfg`` describes, for a tokenizer of ``vocab_size`` ids."""
  cfg = resolve(cfg)
  same = {f.name for f in dataclasses.fields(model_lib.GPTConfig)} & set(dataclasses.asdict(cfg))
  return model_lib.GPTConfig(vocab_size=vocab_size, seq_len=cfg.seq,
                             **{k: getattr(cfg, k) for k in same})  # the fields of the same name


def loss_fn(model: model_lib.GPT, x_BxL, y_BxL, frozen_below: int = 0):
  """Mean next-token cross-entropy (nats per token)."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x_BxL, frozen_below),
                                                         y_BxL).mean()


@nnx.jit
def train_step(model, optimizer, x_BxL, y_BxL, cut=None):
  """One step; ``cut`` (``--drop``): the blocks below it are frozen (progressive.py)."""
  # gathered: FSDP's whole weights for the forward pass (the model itself without a mesh)
  if cut is None:
    loss, grads = nnx.value_and_grad(loss_fn)(mesh_lib.gathered(model), x_BxL, y_BxL)
    optimizer.update(model, grads)
  else:
    loss, grads = progressive.value_and_grad(loss_fn, mesh_lib.gathered(model), cut, x_BxL,
                                             y_BxL)
    optimizer.update(model, grads, cut=cut)
  return loss


def loss_and_max_logits(model: model_lib.GPT, x_BxL, y_BxL):
  """:func:`loss_fn`, and each layer's per-head largest attention logits (``--qk-clip``)."""
  logits_BxLxV, max_logits = model(x_BxL, max_logits=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, y_BxL).mean()
  return loss, max_logits


@nnx.jit
def train_step_qk_clip(model, optimizer, x_BxL, y_BxL):
  """One step of ``--qk-clip``: the optimizer (QK-clip chained last) gets the forward's logits."""
  (loss, max_logits), grads = nnx.value_and_grad(loss_and_max_logits, has_aux=True)(
      mesh_lib.gathered(model), x_BxL, y_BxL)
  optimizer.update(model, grads, max_logits=max_logits)
  return loss


@nnx.jit
def eval_step(model, x_BxL, y_BxL):
  return loss_fn(mesh_lib.gathered(model), x_BxL, y_BxL)


@nnx.jit
def max_logit_step(model, x_BxL):
  """The largest pre-softmax attention logit of any head and layer on ``x_BxL``."""
  _, max_logits = mesh_lib.gathered(model)(x_BxL, max_logits=True)
  return jnp.max(jnp.stack([m.max() for m in max_logits.values()]))


class DivergedError(RuntimeError):
  """The training loss, or the parameters about to be saved, stopped being finite."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jax.tree.reduce(lambda a, x: a & jnp.isfinite(x).all(), tree, jnp.bool_(True))


def diverged(cfg: TrainConfig, step: int, what: str, last: int | None) -> DivergedError:
  """The one-line error: the step, what is not finite, the checkpoint kept, the fix."""
  kept = "no checkpoint saved" if last is None else f"the last checkpoint, step {last}, kept"
  return DivergedError(f"step {step}: {what}; the run diverged and stops ({kept}). Lower --lr"
                       f" (it was {cfg.lr:g}).")


def check_finite(cfg: TrainConfig, losses: list[tuple[int, Any]], last: int | None) -> None:
  """Raises :class:`DivergedError` at the first non-finite loss of ``[(step, loss), ...]``."""
  for step, loss in losses:
    if not math.isfinite(loss := float(loss)):
      raise diverged(cfg, step, f"the training loss is {loss}", last)


def resume_config(cfg: TrainConfig, data: data_lib.Dataset) -> dict:
  """What a checkpoint must agree on to be resumed: what is computed, not the bookkeeping."""
  out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL}
  return {**out, "vocab_size": data.vocab_size, "data_fingerprint": data.fingerprint}


def train(cfg: TrainConfig, *, on_eval: Callable[[int, float, Any], None] | None = None) -> dict:
  """Trains (or resumes) the run ``cfg`` describes; returns its summary.

  ``on_eval(step, val_loss, model)`` runs after each evaluation. Raises
  ``ValueError`` for an invalid ``cfg``, ``checkpoint.CheckpointError`` for a
  checkpoint of other flags, or a corrupt one, and :class:`DivergedError` when
  the training loss is not finite (checked at each log and before each save, so
  no checkpoint holds non-finite parameters). The summary: ``step`` (the last
  done), ``val_loss``, ``unigram`` (train-split character entropy, nats),
  ``output_norm``, ``params`` (numpy, by path), ``resumed_from``, ``workdir``,
  ``plot`` and ``checkpoint``.
  """
  validate(cfg)
  cfg = resolve(cfg)
  mesh_lib.init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id, cfg.mesh)
  data = data_lib.load(cfg.data, val_frac=cfg.val_frac)
  unigram = data_lib.unigram_entropy(data.train_N, data.vocab_size)
  mesh, lead = mesh_lib.make_mesh(cfg.mesh), mesh_lib.is_lead()
  gcfg = model_config(cfg, data.vocab_size)
  tx = make_optimizer(cfg, gcfg)
  os.makedirs(cfg.workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(os.path.join(cfg.workdir, "ckpt"), resume_config(cfg, data),
                               keep=cfg.keep_ckpts)
  with ckpt, mesh_lib.use(mesh):  # the LMO and mesh.gathered find the mesh here
    # A mismatched checkpoint fails here, before anything compiles; a preset starts over.
    latest = ckpt.start(resume=cfg.preset is None if cfg.resume is None else cfg.resume)

    def create():
      model = model_lib.GPT(gcfg, rngs=nnx.Rngs(params=cfg.seed))
      return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = mesh_lib.create(create, mesh)  # one compiled call, laid out on the mesh
    step_fn = mesh_lib.jit_step(train_step if cfg.qk_clip is None else train_step_qk_clip,
                                model, optimizer, mesh, cfg.batch, extra=cfg.drop)
    params = nnx.state(model, nnx.Param)
    if lead and cfg.optimizer in ("scion", "unconstrained_scion", "muon", "hyperball"):
      with open(os.path.join(cfg.workdir, "describe.txt"), "w") as f:
        f.write(f"{ol.describe(tx, params)}\n")

    def state(step: int) -> dict:  # what a checkpoint holds
      return {"model": nnx.state(model, nnx.Param), "optimizer": nnx.state(optimizer),
              "train": {"step": np.int64(step)}}

    start = 0
    if latest is not None:
      restored = ckpt.restore(latest, state(0))
      nnx.update(model, restored["model"])
      nnx.update(optimizer, restored["optimizer"])
      start = int(restored["train"]["step"])
      print(f"resuming from {cfg.workdir}/ckpt/{latest} (step {start} of {cfg.steps})", flush=True)
    resumed_from, n_params = None if latest is None else start, report.size(params)
    log = report.Log(os.path.join(cfg.workdir, "log.jsonl"), keep_until=resumed_from, active=lead)
    if latest is None:
      log.write(kind="config", step=0, config=dataclasses.asdict(cfg), data=data.source,
                vocab_size=data.vocab_size, unigram=unigram, n_params=n_params)
    norm_report, val_loss, out_norm = report.norm_reporter(model_lib.rules(gcfg)), math.nan, None

    def evaluate(step: int, record: bool = True) -> None:
      nonlocal val_loss, out_norm
      batches = [(mesh_lib.put_batch(x, mesh), mesh_lib.put_batch(y, mesh)) for x, y in
                 data_lib.val_batches(data, batch=cfg.batch, seq=cfg.seq,
                                      max_batches=cfg.eval_batches)]
      val_loss = float(np.mean([float(eval_step(model, x, y)) for x, y in batches]))
      max_logit = float(max_logit_step(model, batches[0][0]))  # on the first batch
      norms = norm_report(model)
      out_norm = norms["head/kernel/rms_to_inf"]  # the [NT] output norm
      if on_eval is not None:
        on_eval(step, val_loss, model)
      if record:
        log.write(kind="eval", step=step, val_loss=val_loss, output_norm=out_norm,
                  max_logit=max_logit, **norms)

    lr_at = make_schedule(cfg, cfg.lr)
    stop = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    step, tokens, t_mark = start, 0, time.perf_counter()
    unchecked = []  # (step, loss on device) not yet read: the host waits only where it reads
    if start == 0:
      evaluate(0)
    with tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead),
              dynamic_ncols=True, desc=cfg.optimizer) as bar:  # on stderr
      while step < stop:
        x_BxL, y_BxL = data_lib.train_batch(data, seed=cfg.seed, step=step, batch=cfg.batch,
                                            seq=cfg.seq)
        cut = (progressive.cutoff(cfg.seed, step, cfg.depth),) if cfg.drop else ()
        loss = step_fn(model, optimizer, mesh_lib.put_batch(x_BxL, mesh),
                       mesh_lib.put_batch(y_BxL, mesh), *cut)
        step, tokens = step + 1, tokens + x_BxL.size
        unchecked.append((step, loss))
        bar.update(1)
        # Before this step is logged, evaluated or saved:
        if step == stop or any(step % n == 0 for n in (cfg.log_every, cfg.eval_every,
                                                       cfg.ckpt_every)):
          check_finite(cfg, unchecked, ckpt.latest_step())
          unchecked.clear()
        if step % cfg.log_every == 0 or step == stop:
          loss_f, tps = float(loss), tokens / (time.perf_counter() - t_mark)  # waits for the step
          extra = {} if cfg.adaptive_batch is None else adaptive_stats(optimizer)
          log.write(kind="train", step=step, loss=loss_f, lr=float(lr_at(step - 1)),
                    tokens_per_s=tps, **extra)
          bar.set_postfix(loss=f"{loss_f:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tps:,.0f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
          evaluate(step)
        if step % cfg.ckpt_every == 0 or step == stop:
          if not _all_finite(nnx.state(model, nnx.Param)):  # this step's update: no loss yet
            raise diverged(cfg, step, f"the update made the parameters non-finite (the loss was"
                           f" {float(loss):.4g})", ckpt.latest_step())
          ckpt.save(step, state(step))
        if step % cfg.log_every == 0:  # throughput leaves out compiles, evaluations and saves
          tokens, t_mark = 0, time.perf_counter()
    ckpt.wait()
    if out_norm is None or (step != cfg.steps and step % cfg.eval_every):
      evaluate(step, record=step != start)  # stopped between evaluations, or nothing to do
    png = os.path.join(cfg.workdir, "loss.png") if cfg.plot else None
    if png and lead:
      report.plot(log.read(), png, unigram, f"{cfg.optimizer}, {n_params / 1e6:.2f}M params",
                  radius=cfg.output_radius if cfg.optimizer == "scion" else None)
    last = ckpt.latest_step()
    return dict(step=step, val_loss=val_loss, unigram=unigram, output_norm=out_norm,
                params={ckpt_lib.leaf_name(p): mesh_lib.to_host(x) for p, x in
                        jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]},
                resumed_from=resumed_from, workdir=cfg.workdir, plot=png,
                checkpoint=None if last is None else os.path.join(cfg.workdir, "ckpt", str(last)))


def main(argv: list[str] | None = None) -> None:
  cfg, t0 = parse_args(argv), time.perf_counter()
  try:
    out = train(cfg)
  except (ckpt_lib.CheckpointError, DivergedError) as e:
    raise SystemExit(f"error: {e}") from None
  if mesh_lib.is_lead():
    print(report.summary(cfg.optimizer, out, time.perf_counter() - t0))


if __name__ == "__main__":
  main()
