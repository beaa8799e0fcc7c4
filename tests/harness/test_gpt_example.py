"""The Flax NNX GPT example: it learns, resumes bit for bit, and refuses bad checkpoints."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optax_lmo as ol
from benchmarks.gpt import checkpoint as ckpt_lib
from benchmarks.gpt import data as data_lib
from benchmarks.gpt import model as model_lib
from benchmarks.gpt import progressive
from benchmarks.gpt import train as train_lib

# A failed tensorstore read (the corrupt-checkpoint test) leaves an orbax callback on a closed
# event loop; whichever test is running when it is garbage-collected would report it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in.*Event loop is closed:pytest.PytestUnraisableExceptionWarning"
)

# Tiny on purpose: every train() call costs a few seconds of compilation on CPU. Radii 3 and 10
# at lr 2^-4 from the init on each sphere (large attention logits at step 0, which the QK-clip
# test needs) get 20 steps at width 32 past the unigram loss (the trainer's defaults, radii 48
# and 160 at lr 2^-11, are tuned for 1000 steps at width 128).
TINY = dict(steps=20, width=32, depth=2, heads=2, batch=32, seq=64, lr=2**-4, eval_every=10,
            eval_batches=2, ckpt_every=10, progress=False, plot=False, hidden_radius=3.0,
            output_radius=10.0)


def _cfg(workdir, **kw) -> train_lib.TrainConfig:
  kw = {"init": "scion", **kw} if kw.get("optimizer", "scion") == "scion" else kw
  return train_lib.make_config(**{**TINY, "workdir": str(workdir), **kw})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """One uninterrupted 20-step run, shared by the tests below (they must not write into it)."""
  workdir = tmp_path_factory.mktemp("full")
  return workdir, train_lib.train(_cfg(workdir, plot=True))


def test_twenty_steps_beat_unigram(full_run):
  workdir, out = full_run
  assert out["step"] == 20 and out["resumed_from"] is None
  assert out["val_loss"] < out["unigram"] - 0.1, (out["val_loss"], out["unigram"])
  text, _ = data_lib.load_text(None)
  data = data_lib.build(text)
  assert out["unigram"] == pytest.approx(data_lib.unigram_entropy(data.train_N, data.vocab_size))
  records = [json.loads(line) for line in open(workdir / "log.jsonl")]
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [0, 10, 20]
  assert evals[-1]["val_loss"] < evals[0]["val_loss"]
  head = out["params"]["head/kernel"]  # Flax layout (d, vocab): RMS->inf norm by hand
  by_hand = np.sqrt(head.shape[0]) * np.linalg.norm(head, axis=0).max()
  assert evals[-1]["output_norm"] == pytest.approx(by_hand, rel=1e-5)
  assert os.path.getsize(workdir / "loss.png") > 0
  assert sorted(os.listdir(workdir / "ckpt")) == ["10", "20"]


def test_eval_records_carry_the_norm_report(full_run):
  workdir, out = full_run
  evals = [r for r in map(json.loads, open(workdir / "log.jsonl")) if r["kind"] == "eval"]
  params = out["params"]
  matrices = sorted(name for name, p in params.items() if p.ndim == 2)
  for r in evals:
    keys = list(r)
    assert keys[:4] == ["kind", "step", "val_loss", "output_norm"]
    norm_keys = [k for k in keys if k.count("/") >= 2]
    assert norm_keys[0] == "head/kernel/rms_to_inf"  # the [NT] output norm leads the report
    assert sorted({k.rsplit("/", 1)[0] for k in norm_keys}) == matrices  # no RMSNorm gains
    assert r["head/kernel/rms_to_inf"] == pytest.approx(r["output_norm"], rel=1e-5)
  last = evals[-1]  # the final parameters, against numpy by hand
  for name in matrices:
    w = params[name].astype(np.float64)
    d_in, d_out = w.shape
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    assert last[f"{name}/rms_to_rms"] == pytest.approx(np.sqrt(d_in / d_out) * sigma, rel=1e-4)
    rows = np.linalg.norm(w, axis=1).max() / np.sqrt(d_out)
    assert last[f"{name}/one_to_rms"] == pytest.approx(rows, rel=1e-5)
    cols = np.sqrt(d_in) * np.linalg.norm(w, axis=0).max()
    assert last[f"{name}/rms_to_inf"] == pytest.approx(cols, rel=1e-5)
    assert last[f"{name}/sup"] == pytest.approx(np.abs(w).max(), rel=1e-6)


def test_resume_is_bitwise_identical(full_run, tmp_path):
  _, full = full_run
  first = train_lib.train(_cfg(tmp_path, stop_after=10))
  assert first["step"] == 10
  second = train_lib.train(_cfg(tmp_path))
  assert second["resumed_from"] == 10 and second["step"] == 20
  assert full["params"].keys() == second["params"].keys()
  for name, p in full["params"].items():
    np.testing.assert_array_equal(second["params"][name], p, err_msg=name)
  assert second["val_loss"] == full["val_loss"]
  steps = [r["step"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if r["kind"] == "eval"]
  assert steps == [0, 10, 20]  # the log is continued, not duplicated


def test_mismatched_checkpoint_is_refused(full_run):
  workdir, _ = full_run
  with pytest.raises(ckpt_lib.CheckpointError, match=r"width \(checkpoint 32, this run 48\)"):
    train_lib.train(_cfg(workdir, width=48))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"optimizer \(checkpoint 'scion'"):
    train_lib.train(_cfg(workdir, optimizer="adamw"))


@pytest.mark.parametrize("field, saved, value", [
    ("depth", 2, 3), ("optimizer", "scion", "muon"), ("dtype", "float32", "bfloat16"),
    ("heads", 2, 4),
])
def test_each_config_mismatch_is_named(full_run, field, saved, value):
  """Refused before any model is built (cheap); the message names the field and both values."""
  workdir, _ = full_run
  want = rf"{field} \(checkpoint {saved!r}, this run {value!r}\).*same flags"
  with pytest.raises(ckpt_lib.CheckpointError, match=want):
    train_lib.train(_cfg(workdir, **{field: value}))


def _damage_arrays(step_dir):
  """Overwrites the middle of every stored data file (orbax's OCDBT chunks)."""
  n = 0
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      path = os.path.join(root, f)
      size = os.path.getsize(path)
      if "/d" in root and size > 64:
        with open(path, "r+b") as fh:
          fh.seek(size // 2)
          fh.write(os.urandom(32))
        n += 1
  assert n > 0


def _damage_meta(step_dir):
  for root, _, files in os.walk(step_dir / "meta"):
    for f in files:
      with open(os.path.join(root, f), "w") as fh:
        fh.write("{not json")


@pytest.mark.parametrize("damage", [_damage_arrays, _damage_meta], ids=["arrays", "meta"])
def test_corrupt_checkpoint_is_refused(full_run, tmp_path, damage):
  workdir, _ = full_run
  shutil.copytree(workdir / "ckpt", tmp_path / "ckpt")
  damage(tmp_path / "ckpt" / "20")
  with pytest.raises(ckpt_lib.CheckpointError, match="corrupt"):
    train_lib.train(_cfg(tmp_path))


def test_strict_leaf_check_names_the_leaf(tmp_path):
  tree = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "c"), {"width": 3})
  ck.save(1, tree)
  ck.wait()
  np.testing.assert_array_equal(ck.restore(1, tree)["w"], tree["w"])
  with pytest.raises(ckpt_lib.CheckpointError, match=r"w: checkpoint float32\[2, 3\]"):
    ck.restore(1, {"w": np.zeros((2, 4), np.float32), "b": tree["b"]})
  with pytest.raises(ckpt_lib.CheckpointError, match="missing"):
    ck.restore(1, {**tree, "extra": np.zeros(1, np.float32)})
  ck.close()


def test_strict_leaf_check_refuses_dtype_and_structure(tmp_path):
  tree = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "c"), {"width": 3})
  ck.save(1, tree)
  ck.wait()
  err = ckpt_lib.CheckpointError
  with pytest.raises(err, match=r"b: checkpoint float32\[3\], expected bfloat16\[3\]"):
    ck.restore(1, {**tree, "b": np.zeros(3, jnp.bfloat16)})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"unexpected \['b'\]"):
    ck.restore(1, {"w": tree["w"]})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"missing \['v'\]; unexpected \['w'\]"):
    ck.restore(1, {"v": tree["w"], "b": tree["b"]})
  other = ckpt_lib.Checkpointer(str(tmp_path / "c"), {"width": 4})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"width \(checkpoint 3, this run 4\)"):
    other.restore(1, tree)
  other.close()
  ck.close()


def test_the_rules_are_infer_rules_at_the_library_radii_and_head_norm():
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=1, heads=2)
  rules = model_lib.rules(cfg)
  sign = model_lib.rules(dataclasses.replace(cfg, output_norm="sign"))
  params = nnx.state(model_lib.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  rows = {r["path"]: r for r in ol.describe(rules, params)}
  assert rows["head/kernel"]["radius"] == 160.0  # the library's defaults
  assert rows["blocks/0/attn/qkv/kernel"]["radius"] == 48.0
  assert rows["blocks/0/norm1/scale"]["norm"] == "BiasRMS"
  assert "dot_general" in rows["head/kernel"]["evidence"]  # from the trace, not by name
  assert {r["path"]: r["norm"] for r in ol.describe(sign, params)}["head/kernel"] == "Sign"
  with pytest.raises(ValueError, match="output_norm must be 'rownorm' or 'sign'"):
    model_lib.GPTConfig(output_norm="l1")


def test_every_parameter_is_routed_as_the_module_docstring_says():
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=2, heads=2, rotary=False,
                            init="scion", hidden_radius=3.0, output_radius=10.0)
  model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
  rules = model_lib.rules(cfg)
  got = {ckpt_lib.leaf_name(p): (x.shape, type(rules.group_for(ckpt_lib.leaf_name(p), x).norm))
         for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
  d, v = 16, 11
  nrm = ol.norms
  want = {
      "embed/embedding": ((v, d), nrm.ColNorm),
      "pos_embed/embedding": ((8, d), nrm.ColNorm),
      "final_norm/scale": ((d,), nrm.BiasRMS),
      "head/kernel": ((d, v), nrm.RowNorm),
  }
  for i in range(2):
    want.update({
        f"blocks/{i}/norm1/scale": ((d,), nrm.BiasRMS),
        f"blocks/{i}/norm2/scale": ((d,), nrm.BiasRMS),
        f"blocks/{i}/attn/qkv/kernel": ((d, 3 * d), nrm.Spectral),
        f"blocks/{i}/attn/out/kernel": ((d, d), nrm.Spectral),
        f"blocks/{i}/mlp/fc_in/kernel": ((d, 4 * d), nrm.Spectral),
        f"blocks/{i}/mlp/fc_out/kernel": ((4 * d, d), nrm.Spectral),
    })
  assert got == want
  # The scion init puts every matrix on its ball: ||W|| = radius.
  assert float(nrm.RowNorm().norm(model.head.kernel[...])) == pytest.approx(10.0, rel=1e-5)
  assert float(nrm.ColNorm().norm(model.embed.embedding[...])) == pytest.approx(1.0, rel=1e-5)
  qkv = model.blocks[0].attn.qkv.kernel[...]
  assert float(nrm.Spectral().norm(qkv)) == pytest.approx(3.0, rel=1e-4)


def test_model_is_causal():
  cfg = model_lib.GPTConfig(vocab_size=7, seq_len=8, width=16, depth=2, heads=2)
  model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
  x = np.array([[1, 2, 3, 4, 5, 6]])
  y = np.array([[1, 2, 3, 4, 0, 0]])
  a, b = model(x), model(y)
  np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_batches_are_a_pure_function_of_seed_and_step():
  data = data_lib.build("abcdefghij" * 300)
  x1, y1 = data_lib.train_batch(data, seed=3, step=7, batch=4, seq=16)
  x2, _ = data_lib.train_batch(data, seed=3, step=7, batch=4, seq=16)
  x3, _ = data_lib.train_batch(data, seed=3, step=8, batch=4, seq=16)
  np.testing.assert_array_equal(x1, x2)
  assert not np.array_equal(x1, x3)
  np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])
  assert data.decode(data.encode("hij")) == "hij"


def test_every_flag_has_help(capsys):
  with pytest.raises(SystemExit) as exit_:
    train_lib.parse_args(["--help"])
  assert exit_.value.code == 0
  text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
  for f in dataclasses.fields(train_lib.TrainConfig):
    assert "--" + f.name.replace("_", "-") in text, f.name
    assert f.metadata["help"] and " ".join(f.metadata["help"].split()) in text, f.name
  cfg = train_lib.parse_args(["--preset", "demo", "--steps", "7", "--no-rotary"])
  assert cfg.steps == 7 and not cfg.rotary and cfg.workdir == "runs/demo"


# Each is refused before anything is built: exit status 2 and one `error:` line naming the flag.
BAD_FLAGS = [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--adam-lr", "-1"], "--adam-lr must be > 0"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "ten"], "--steps: invalid int value"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--batch", "-4"], "--batch must be >= 1"),
    (["--width", "100", "--heads", "3"], "heads=3 must divide width=100"),
    (["--width", "12", "--heads", "4"], "rotary needs an even head dimension"),
    (["--optimizer", "sgd"], "--optimizer: invalid choice: 'sgd'"),
    (["--beta", "1"], "--beta must be in [0, 1)"),
    (["--beta", "-0.5"], "--beta must be in [0, 1)"),
    (["--weight-decay", "0.1"], "--weight-decay: scion has none to set"),
    (["--optimizer", "adamw", "--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--decay-frac", "1.5"], "--decay-frac must be in [0, 1]"),
    (["--val-frac", "0"], "--val-frac must be in (0, 1)"),
    (["--embed-radius", "0"], "--embed-radius must be > 0"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--optimizer", "adamw", "--nesterov"], "adamw does not take them"),
    (["--optimizer", "optax_muon", "--ns-steps", "3"], "optax_muon does not take them"),
    (["--ns-steps", "0"], "--ns-steps must be >= 1"),
    (["--ns-coeffs", "newton"], "--ns-coeffs: invalid choice: 'newton'"),
    (["--head-init-scale", "-1"], "--head-init-scale must be >= 0"),
    (["--schedule", "exp"], "--schedule: invalid choice: 'exp'"),
    (["--mesh", "data=two"], "--mesh 'data=two'"),
    (["--mesh", "data=2,fsdp=4", "--batch", "12"], "--batch 12 does not split"),
    (["--num-processes", "2"], "--num-processes > 1 needs --coordinator"),
    (["--process-id", "1"], "--process-id must be < --num-processes 1"),
    (["--data", "/nonexistent/text.txt"], "--data /nonexistent/text.txt: no such file"),
    (["--adaptive-batch", "0"], "--adaptive-batch must be > 0"),
    (["--adaptive-batch", "-0.5"], "--adaptive-batch must be > 0"),
    (["--adaptive-batch", "nan"], "--adaptive-batch must be a finite number"),
    (["--adaptive-batch", "half"], "--adaptive-batch: invalid float value"),
    (["--adaptive-batch", "0.5", "--max-micro-batches", "1"], "--max-micro-batches must be >= 2"),
    (["--drop", "--depth", "1"], "--drop freezes the blocks below a cutoff: it needs --depth >= 2"),
    (["--drop", "--adaptive-batch", "0.5"], "--drop and --adaptive-batch do not combine"),
    (["--drop", "yes"], "unrecognized arguments: yes"),
    (["--qk-clip", "0"], "--qk-clip must be > 0"),
    (["--lr", "1e300"], "--lr 1e+300 is infinite in float32"),
    (["--qk-clip", "inf"], "--qk-clip must be a finite number"),
    (["--qk-clip", "100", "--drop"], "--qk-clip does not combine with --drop or --adaptive-batch"),
    (["--seq", "1000000"], "pydoc_data.topics: 465048 characters, too few: --seq 1000000 needs"),
    (["--blocks", "heads"], "--blocks: invalid choice: 'heads'"),
    (["--optimizer", "adamw", "--blocks", "split"],
     "--blocks split: adamw does not route by the example's rules"),
    (["--optimizer", "optax_muon", "--blocks", "per_head"],
     "--blocks per_head: optax_muon does not route by the example's rules"),
    (["--optimizer", "adamw", "--row-norm"], "--row-norm normalizes the spectral directions"),
    (["--optimizer", "hyperball", "--row-norm"], "hyperball has none (use --optimizer scion"),
    (["--optimizer", "optax_muon", "--ns-precondition", "aol"], "optax_muon does not take them"),
    (["--polar", "svd", "--ns-precondition", "aol"], "--polar svd runs none"),
    (["--ns-precondition", "spectral"], "--ns-precondition: invalid choice: 'spectral'"),
    (["--optimizer", "hyperball", "--weight-decay", "0.1"], "hyperball has none to set"),
    (["--optimizer", "hyperball", "--adaptive-batch", "0.5"], "hyperball's retraction is not"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_invalid_flag_exits_2_with_one_error_line(capsys, argv, message):
  error = _exits_2_with_one_error_line(capsys, argv)
  assert message in error, error


@pytest.mark.parametrize("shape", ["linear_decay", "cosine_decay", "sqrt_decay", "constant"])
def test_schedule_warms_up_holds_and_decays_along_its_shape(shape):
  cfg = train_lib.resolve(train_lib.make_config(schedule=shape, steps=100, warmup=10,
                                                decay_frac=0.4))
  f = train_lib.make_schedule(cfg, 2.0)
  progress = np.linspace(0.0, 1.0, 9)  # of the decay, over steps 60..100
  want = {"linear_decay": 1 - progress, "cosine_decay": 0.5 * (1 + np.cos(np.pi * progress)),
          "sqrt_decay": 1 - np.sqrt(progress), "constant": np.ones_like(progress)}[shape]
  np.testing.assert_allclose([float(f(n)) for n in (0, 5, 10, 59)], [0.0, 1.0, 2.0, 2.0])
  np.testing.assert_allclose([float(f(60 + 40 * t)) for t in progress], 2.0 * want, atol=1e-6)


def test_optimizer_flags_reach_the_optimizer(monkeypatch):
  seen = {}
  monkeypatch.setattr(ol, "scion", lambda lr, **kw: seen.update(kw) or optax.identity())
  cfg = train_lib.make_config(nesterov=True, ns_coeffs="jordan", ns_steps=3, steps=10)
  train_lib.make_optimizer(cfg, train_lib.model_config(cfg, vocab_size=7))
  assert seen["nesterov"] is True and seen["polar"] == ol.Polar(coeffs="jordan", steps=3)
  seen.clear()
  cfg = train_lib.make_config(steps=10)
  train_lib.make_optimizer(cfg, train_lib.model_config(cfg, vocab_size=7))
  assert "nesterov" not in seen and seen["polar"] is None  # the library's own defaults
  assert "row_norm" not in seen
  seen.clear()
  cfg = train_lib.make_config(row_norm=True, ns_precondition="aol", ns_coeffs="aol", steps=10)
  train_lib.make_optimizer(cfg, train_lib.model_config(cfg, vocab_size=7))
  assert seen["row_norm"] is True
  assert seen["polar"] == ol.Polar(coeffs="aol", preconditioning="aol")  # 4 steps: the preset's
  for name, target in (("muon", ol), ("scion_hybrid", ol), ("hyperball", ol.contrib)):
    seen.clear()
    attr = "hyperball" if name == "hyperball" else "muon"
    monkeypatch.setattr(target, attr, lambda lr, **kw: seen.update(kw) or optax.identity())
    row = {} if name == "hyperball" else dict(row_norm=True)
    cfg = train_lib.make_config(optimizer=name, ns_precondition="aol", steps=10, **row)
    train_lib.make_optimizer(cfg, train_lib.model_config(cfg, vocab_size=7))
    assert seen["polar"] == ol.Polar(preconditioning="aol"), name
    assert seen.get("row_norm") is (None if name == "hyperball" else True), name


def test_head_init_scale_scales_the_initial_head_only():
  def params(scale):
    cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=1, heads=2,
                              head_init_scale=scale)
    return {ckpt_lib.leaf_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(
        nnx.state(model_lib.GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param))[0]}

  one, zero, tenth = params(1.0), params(0.0), params(0.1)
  assert not zero["head/kernel"].any() and one["head/kernel"].any()
  np.testing.assert_allclose(tenth["head/kernel"], 0.1 * one["head/kernel"], rtol=1e-6)
  for k in one:
    if k != "head/kernel":
      np.testing.assert_array_equal(zero[k], one[k], err_msg=k)


def test_validate_refuses_a_config_built_in_python():
  with pytest.raises(ValueError, match="--lr must be a finite number, got nan"):
    train_lib.validate(train_lib.make_config(lr=float("nan")))
  with pytest.raises(ValueError, match="--optimizer 'sgd': choose from scion"):
    train_lib.train(train_lib.make_config(optimizer="sgd"))


def test_main_writes_the_summary_to_stdout_and_the_progress_bar_to_stderr(tmp_path, capsys):
  train_lib.main(["--steps", "2", "--width", "16", "--depth", "1", "--heads", "2", "--batch", "4",
                  "--seq", "16", "--eval-batches", "1", "--log-every", "1", "--no-plot",
                  "--workdir", str(tmp_path)])
  out, err = capsys.readouterr()
  assert "scion: 2 steps (fresh)" in out and "final validation loss" in out
  assert "2/2" in err and "2/2" not in out  # tqdm's counter


def _exits_2_with_one_error_line(capsys, argv) -> str:
  with pytest.raises(SystemExit) as exit_:
    train_lib.main(argv)
  assert exit_.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and "Traceback" not in err
  errors = [line for line in err.splitlines() if "error:" in line]
  assert len(errors) == 1 and errors[0].startswith("python -m benchmarks.gpt.train: error: ")
  return errors[0]


def test_too_short_data_file_says_how_many_characters_it_needs(tmp_path, capsys):
  six = tmp_path / "six.txt"
  six.write_text("hello\n")
  line = _exits_2_with_one_error_line(capsys, ["--data", str(six)])  # --seq 128
  need = data_lib.min_chars(seq=128, val_frac=0.1)
  assert f"--data {six}: 6 characters, too few: --seq 128 needs {need}" in line, line
  line = _exits_2_with_one_error_line(capsys, ["--data", str(six), "--seq", "16"])
  assert "6 characters, too few: at least 1000 to train on; use a text of at least 1000" in line
  short = tmp_path / "short.txt"
  short.write_text("abcdefghij" * 300)  # 3000 characters: 300 of validation at --val-frac 0.1
  need = data_lib.min_chars(seq=500, val_frac=0.1)
  line = _exits_2_with_one_error_line(capsys, ["--data", str(short), "--seq", "500"])
  assert f"3000 characters, too few: --seq 500 needs {need}, so that the validation split" in line
  assert "a smaller --seq or a larger --val-frac" in line, line
  line = _exits_2_with_one_error_line(capsys, ["--data", str(short), "--seq", "500",
                                               "--val-frac", "0.9"])
  assert "so that the train split (all but --val-frac 0.9) holds --seq + 2" in line, line
  binary = tmp_path / "binary.txt"
  binary.write_bytes(b"\xff\xfe" * 1000)
  assert "not UTF-8 text" in _exits_2_with_one_error_line(capsys, ["--data", str(binary)])


@pytest.mark.parametrize("seq, val_frac", [(16, 0.1), (64, 0.1), (500, 0.1), (500, 0.5),
                                           (300, 0.9), (999, 0.3)])
def test_min_chars_is_the_fewest_characters_the_batches_take(seq, val_frac):
  """At min_chars both splits give a batch; one character fewer, one split is too short."""
  need = data_lib.min_chars(seq=seq, val_frac=val_frac)

  def batches(n):
    data = data_lib.build("".join(chr(97 + i % 26) for i in range(n)), val_frac=val_frac)
    data_lib.train_batch(data, seed=0, step=0, batch=2, seq=seq)
    next(data_lib.val_batches(data, batch=2, seq=seq, max_batches=1))

  batches(need)
  if need > data_lib.MIN_CHARS:
    with pytest.raises(ValueError, match="is shorter than seq="):
      batches(need - 1)
  else:
    assert need == data_lib.MIN_CHARS


NAN_RUN = ["--steps", "20", "--width", "16", "--depth", "1", "--heads", "2", "--batch", "4",
           "--seq", "16", "--eval-batches", "1", "--log-every", "10", "--ckpt-every", "1",
           "--no-plot", "--no-progress"]


@pytest.mark.parametrize("lr, what", [("1e9", "the training loss is"),
                                      ("1e37", "the update made the parameters non-finite")])
def test_non_finite_run_stops_with_one_error_and_saves_no_non_finite_checkpoint(
    tmp_path, capsys, lr, what):
  """1e9: the loss turns nan a step after a finite (huge) update; 1e37 times the radius is inf
  in float32."""
  with pytest.raises(SystemExit) as exit_:
    train_lib.main([*NAN_RUN, "--lr", lr, "--workdir", str(tmp_path)])
  message = str(exit_.value.code)  # SystemExit(str): printed to stderr, exit status 1
  assert message.startswith("error: step ") and "\n" not in message, message
  assert what in message and f"Lower --lr (it was {float(lr):g})" in message, message
  bad = int(message.split()[2].rstrip(":"))
  assert bad < 20  # stopped early, not after 20 steps of nan
  saved = sorted(int(s) for s in os.listdir(tmp_path / "ckpt"))
  assert all(s < bad for s in saved), (saved, bad)
  last = f"the last checkpoint, step {saved[-1]}, kept" if saved else "no checkpoint saved"
  assert last in message, message
  if saved:  # what was saved is finite
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    state = manager.restore(saved[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    assert all(np.isfinite(v).all() for v in state["state"].values())
  assert "Traceback" not in capsys.readouterr().err


def test_optimizers_build_for_the_model():
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=1, heads=2)
  model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  for name in train_lib.OPTIMIZERS:
    tx = train_lib.make_optimizer(train_lib.make_config(optimizer=name, steps=10), cfg)
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates)), name


def test_batch_that_does_not_split_over_the_mesh_is_refused():
  with pytest.raises(ValueError, match=r"--batch 12 .* data x fsdp = 8"):
    train_lib.validate(train_lib.make_config(mesh="data=2,fsdp=4", batch=12))
  train_lib.validate(train_lib.make_config(mesh="data=2,fsdp=4", batch=16))  # a multiple is fine
  train_lib.validate(train_lib.make_config(mesh="tp=8", batch=3))  # tp does not split the batch


@pytest.mark.parametrize("flags", [dict(drop=True), dict(adaptive_batch=0.5, max_micro_batches=3),
                                   dict(qk_clip=2.0),
                                   dict(row_norm=True, ns_precondition="aol", ns_coeffs="aol"),
                                   dict(optimizer="hyperball")],
                         ids=["drop", "adaptive_batch", "qk_clip", "row_norm_aol", "hyperball"])
def test_new_flags_train_and_resume_bitwise(tmp_path, flags):
  """A short run with the flag learns; stopped and resumed, it ends bit for bit where it would."""
  kw = dict(steps=12, eval_every=6, ckpt_every=6, log_every=1, **flags)
  full = train_lib.train(_cfg(tmp_path / "full", **kw))
  first = train_lib.train(_cfg(tmp_path / "split", stop_after=6, **kw))
  second = train_lib.train(_cfg(tmp_path / "split", **kw))
  assert first["step"] == 6 and second["resumed_from"] == 6 and second["step"] == 12
  for name, p in full["params"].items():
    np.testing.assert_array_equal(second["params"][name], p, err_msg=name)
  records = list(map(json.loads, open(tmp_path / "split" / "log.jsonl")))
  evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
  assert len(evals) == 3 and evals[-1] < evals[0] - 0.5, evals  # it learns
  log = [r for r in records if r["kind"] == "train"]
  assert [r["step"] for r in log] == list(range(1, 13))  # continued, not duplicated
  if "adaptive_batch" in flags:  # each optimizer step takes 2..max micro-batches
    steps = [r["opt_steps"] for r in log]
    assert steps == sorted(steps) and 12 // 3 <= steps[-1] <= 12 // 2
    assert all(2 <= r["batch_size"] <= 3 for r in log if r["opt_steps"])


def test_cutoffs_are_a_pure_uniform_function_of_seed_and_step():
  draws = np.array([progressive.cutoff(0, s, 4) for s in range(4000)])
  assert progressive.cutoff(0, 17, 4) == draws[17] and draws.dtype == np.int32
  counts = np.bincount(draws, minlength=4)
  assert len(counts) == 4 and ((counts - 1000) ** 2 / 1000).sum() < 16.3  # chi2(3), p = 0.001
  assert not np.array_equal(draws[:50], [progressive.cutoff(1, s, 4) for s in range(50)])


def _gpt_and_batch(depth=3):
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=depth, heads=2)
  x = jax.random.randint(jax.random.key(0), (2, 8), 0, 11)
  return model_lib.GPT(cfg, rngs=nnx.Rngs(0)), x, jnp.roll(x, -1, axis=1)


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_frozen_blocks_get_no_gradient_and_the_rest_the_full_one(cut):
  model, x, y = _gpt_and_batch()
  full = nnx.grad(train_lib.loss_fn)(model, x, y)
  loss, grads = jax.jit(lambda c: progressive.value_and_grad(
      train_lib.loss_fn, model, c, x, y))(jnp.int32(cut))
  assert float(loss) == pytest.approx(float(train_lib.loss_fn(model, x, y)), rel=1e-6)
  for (path, g), f in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                          jax.tree.leaves(full), strict=True):
    name = ckpt_lib.leaf_name(path)
    frozen = (name.startswith("blocks/") and int(name.split("/")[1]) < cut) or (
        name.startswith("embed/") and cut > 0)
    if frozen:
      assert not np.any(g), name
    else:
      np.testing.assert_allclose(g, f, rtol=1e-4, atol=1e-5, err_msg=name)  # jit vs eager


@pytest.mark.parametrize("name", ["scion", "adamw"])
def test_freeze_holds_frozen_params_and_state_and_steps_the_rest_as_the_plain_optimizer(name):
  model, x, y = _gpt_and_batch()
  cfg = train_lib.make_config(optimizer=name, steps=10)
  plain = train_lib.make_optimizer(cfg, model.cfg)
  frozen = progressive.freeze(plain)
  params = nnx.state(model, nnx.Param)
  grads = nnx.grad(train_lib.loss_fn)(model, x, y)
  step = jax.jit(lambda g, s, p, c: frozen.update(g, s, p, cut=c))
  _, s_plain = jax.jit(plain.update)(grads, plain.init(params), params)
  _, s_frozen = step(grads, frozen.init(params), params, jnp.int32(0))  # cut 0: a full step
  u_plain, s_plain2 = jax.jit(plain.update)(grads, s_plain, params)
  u, s_frozen2 = step(grads, s_frozen, params, jnp.int32(2))  # from non-zero momentum
  flat = lambda t: {ckpt_lib.leaf_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  for k, v in flat(u).items():
    held = k.startswith(("blocks/0/", "blocks/1/", "embed/"))
    if held:
      assert not np.any(v), k
    else:
      ref = flat(u_plain)[k]  # Newton–Schulz run per matrix (masked) vs batched: rounding
      np.testing.assert_allclose(v, ref, atol=1e-3 * np.abs(ref).max(), err_msg=k)
  new, old, ref = flat(s_frozen2), flat(s_frozen), flat(s_plain2)
  for k in new:
    if "blocks/0/" in k or "blocks/1/" in k or "/embed/" in k:
      np.testing.assert_array_equal(new[k], old[k], err_msg=k)  # momentum held, not decayed
    else:
      np.testing.assert_allclose(new[k], ref[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("optimizer", train_lib.OPTIMIZERS)
def test_unset_flags_take_the_optimizers_defaults_and_set_ones_are_kept(optimizer):
  cfg = train_lib.resolve(train_lib.make_config(optimizer=optimizer))
  hidden, output = (3.0, 10.0) if optimizer == "unconstrained_scion" else (48.0, 160.0)
  assert (cfg.hidden_radius, cfg.output_radius) == (hidden, output)
  assert cfg.init == {"scion": "rms", "unconstrained_scion": "scion"}.get(optimizer, "standard")
  assert cfg.lr == train_lib.DEFAULT_LR[optimizer]
  assert cfg.decay_frac == (0.5 if optimizer == "scion" else 0.3)
  assert train_lib.resolve(cfg) == cfg
  gcfg = train_lib.model_config(train_lib.make_config(optimizer=optimizer), vocab_size=7)
  assert (gcfg.hidden_radius, gcfg.output_radius, gcfg.init) == (hidden, output, cfg.init)
  mine = dict(lr=0.5, beta=0.3, init="standard", hidden_radius=2.0, output_radius=4.0,
              decay_frac=0.1)
  assert train_lib.resolve(train_lib.make_config(optimizer=optimizer, **mine)) == (
      train_lib.make_config(optimizer=optimizer, **mine))


@pytest.mark.parametrize("hidden,output", [(6.0, 20.0), (48.0, 160.0)])
def test_rms_init_keeps_the_gains_and_starts_near_flax_init(hidden, output):
  """``--init rms`` (ol.init_params) leaves the RMSNorm scales at 1 and starts within half a
  nat of Flax's init at any radius; the scion init (on the ball's boundary) does not."""
  def first_loss(init):
    cfg = model_lib.GPTConfig(vocab_size=40, seq_len=16, width=32, depth=2, heads=2, init=init,
                              hidden_radius=hidden, output_radius=output)
    model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, 40)
    return model, float(train_lib.loss_fn(model, tokens[:, :-1], tokens[:, 1:]))

  model, rms = first_loss("rms")
  _, flax = first_loss("standard")
  _, boundary = first_loss("scion")
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
    if ckpt_lib.leaf_name(path).endswith("scale"):
      np.testing.assert_array_equal(x, np.ones_like(x))
  assert abs(rms - flax) < 0.5, (rms, flax)
  assert boundary > flax + 1.0, (boundary, flax)


def _max_logits(model: model_lib.GPT, x_BxL) -> np.ndarray:
  """Every head's largest attention logit on ``x_BxL``, layer after layer."""
  return np.concatenate([np.asarray(m) for m in model(x_BxL, max_logits=True)[1].values()])


def test_max_logits_match_a_numpy_attention_and_leave_the_logits_alone():
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=2, heads=2, rotary=False)
  model = model_lib.GPT(cfg, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(0, 11, (3, 8))
  logits, found = model(tokens, max_logits=True)
  assert list(found) == ["blocks/0/attn", "blocks/1/attn"]
  np.testing.assert_allclose(logits, model(tokens), rtol=1e-5, atol=1e-5)  # the fused path
  x_BxLxD = np.random.default_rng(1).standard_normal((3, 8, 16)).astype(np.float32)
  attn = model.blocks[0].attn
  _, max_H = attn(jnp.asarray(x_BxLxD), max_logits=True)
  q, k, _ = np.split(x_BxLxD.astype(np.float64) @ np.asarray(attn.qkv.kernel[...]), 3, axis=-1)
  q, k = q.reshape(3, 8, 2, 8), k.reshape(3, 8, 2, 8)
  by_hand = np.einsum("bihk,bjhk->bhij", q, k) / np.sqrt(8)
  by_hand = np.where(np.tril(np.ones((8, 8), bool)), by_hand, -np.inf).max(axis=(0, 2, 3))
  np.testing.assert_allclose(max_H, by_hand, rtol=1e-5)


def test_each_evaluation_logs_the_largest_attention_logit(full_run, tmp_path):
  workdir, out = full_run
  with open(os.path.join(workdir, "log.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [0, 10, 20]
  data = data_lib.load(None)
  x_BxL, _ = next(iter(data_lib.val_batches(data, batch=TINY["batch"], seq=TINY["seq"],
                                            max_batches=TINY["eval_batches"])))
  model = model_lib.GPT(train_lib.model_config(_cfg(tmp_path), data.vocab_size), rngs=nnx.Rngs(0))
  nnx.update(model, jax.tree_util.tree_map_with_path(
      lambda p, _: out["params"][ckpt_lib.leaf_name(p)], nnx.state(model, nnx.Param)))
  assert evals[-1]["max_logit"] == pytest.approx(float(_max_logits(model, x_BxL).max()), rel=1e-5)


def test_qk_clip_holds_the_attention_logits_near_tau(full_run, tmp_path):
  """--qk-clip TAU: heads' largest logits start far above TAU and end near it; without, above."""
  _, plain = full_run
  data = data_lib.load(None)
  x_BxL = data_lib.train_batch(data, seed=0, step=0, batch=8, seq=64)[0]
  tau, seen = 2.0, {}
  record = lambda step, _, model: seen.update({step: _max_logits(model, x_BxL)})
  out = train_lib.train(_cfg(tmp_path, qk_clip=tau), on_eval=record)
  assert out["step"] == 20 and out["val_loss"] < out["unigram"] - 0.1, out["val_loss"]
  assert seen[0].min() > 4 * tau, seen[0]  # the init (the same as the plain run's)
  assert seen[20].max() < 1.5 * tau, seen[20]
  model = model_lib.GPT(train_lib.model_config(_cfg(tmp_path), data.vocab_size), rngs=nnx.Rngs(0))
  nnx.update(model, jax.tree_util.tree_map_with_path(
      lambda p, _: plain["params"][ckpt_lib.leaf_name(p)], nnx.state(model, nnx.Param)))
  assert _max_logits(model, x_BxL).min() > 2 * tau  # the same 20 steps without the clip


# --blocks on the tiny model (width 32, 2 heads): the view of the fused (32, 96) qkv kernel.
QKV_SHOWN = {"fused": "32x96", "split": "3x32x32 (fan-out in 3 blocks)",
             "per_head": "6x32x16 (fan-out in 6 blocks)"}


def _qkv_rows(table: str) -> list[str]:
  return [line for line in str(table).splitlines() if "/attn/qkv/kernel " in line]


def test_the_fused_qkv_view_is_the_default_and_leaves_the_rules_alone(full_run):
  workdir, _ = full_run
  assert train_lib.make_config().blocks == "fused"
  assert model_lib.GPTConfig().blocks == "fused"
  rows = _qkv_rows(open(workdir / "describe.txt").read())
  assert len(rows) == 2 and all(f" {QKV_SHOWN['fused']} " in r and " in " not in r for r in rows)
  config = json.loads(open(workdir / "log.jsonl").readline())["config"]
  assert config["blocks"] == "fused"


@pytest.mark.parametrize("optimizer", train_lib.ROUTED)
def test_every_routed_optimizer_sees_the_qkv_kernel_in_its_view(optimizer):
  """The qkv kernel alone changes view, keeping its norm and radius; other leaves as fused."""
  tables = {}
  for view in model_lib.BLOCKS:
    cfg = train_lib.make_config(**{**TINY, "optimizer": optimizer, "blocks": view,
                                   "depth": 1})
    gcfg = train_lib.model_config(cfg, vocab_size=11)
    params = nnx.state(model_lib.GPT(gcfg, rngs=nnx.Rngs(0)), nnx.Param)
    tables[view] = str(ol.describe(train_lib.make_optimizer(cfg, gcfg), params)).splitlines()
    (row,) = _qkv_rows("\n".join(tables[view]))
    assert f" {QKV_SHOWN[view]} " in row and " Spectral " in row, (view, row)
  for view in ("split", "per_head"):
    for fused, other in zip(tables["fused"][2:], tables[view][2:], strict=True):  # no header
      if "/attn/qkv/kernel " in fused:  # after the view: the same norm, radius, lr_mult, ...
        # ... up to the role; the evidence then names the view the trace cut.
        after_fused = fused.split(QKV_SHOWN["fused"])[1].split(" hidden ")[0].split()
        after = other.split(QKV_SHOWN[view])[1].split(" hidden ")[0].split()
        assert after == after_fused, (fused, other)
        assert f"-> {view}" in other, other
      else:
        assert fused.split() == other.split(), (fused, other)


@pytest.mark.parametrize("init", ["scion", "rms"])
@pytest.mark.parametrize("view, blocks", [("fused", 1), ("split", 3), ("per_head", 6)])
def test_the_inits_make_each_matrix_of_the_qkv_view_semi_orthogonal(init, view, blocks):
  """Each matrix of the view has equal singular values; the scion init puts it on the ball.

  q, k and v of the fused view are not semi-orthogonal (thirds of one random
  ``d x 3d`` semi-orthogonal matrix): the view reaches the init.
  """
  cfg = model_lib.GPTConfig(vocab_size=11, seq_len=8, width=16, depth=1, heads=2, init=init,
                            blocks=view, hidden_radius=3.0)
  w = np.asarray(model_lib.GPT(cfg, rngs=nnx.Rngs(0)).blocks[0].attn.qkv.kernel[...], np.float64)
  for block in np.split(w, blocks, axis=1):
    sigma = np.linalg.svd(block, compute_uv=False)
    np.testing.assert_allclose(sigma, sigma[0], rtol=1e-4)
    if init == "scion":  # the RMS->RMS norm sqrt(d_in / d_out) sigma is the radius
      assert np.sqrt(16 / block.shape[1]) * sigma[0] == pytest.approx(3.0, rel=1e-4)
  if view == "fused":
    for third in np.split(w, 3, axis=1):
      sigma = np.linalg.svd(third, compute_uv=False)
      assert sigma[0] > 1.5 * sigma[-1], sigma


@pytest.mark.parametrize("optimizer, view", [("scion", "split"), ("muon", "per_head")])
def test_a_qkv_view_trains_and_is_recorded(tmp_path, optimizer, view):
  """Two steps train; describe.txt shows the view and the log's config records it."""
  out = train_lib.train(_cfg(tmp_path, optimizer=optimizer, blocks=view, steps=2,
                             eval_every=2, ckpt_every=2, log_every=1))
  assert out["step"] == 2 and all(np.isfinite(p).all() for p in out["params"].values())
  rows = _qkv_rows(open(tmp_path / "describe.txt").read())
  assert len(rows) == 2 and all(f" {QKV_SHOWN[view]} " in r for r in rows), rows
  records = list(map(json.loads, open(tmp_path / "log.jsonl")))
  assert records[0]["config"]["blocks"] == view
  evals = [r["val_loss"] for r in records if r["kind"] == "eval"]
  assert len(evals) == 2 and evals[-1] < evals[0], evals
