"""benchmarks/gpu.sh in toy mode: every part runs on CPU and writes JSON that names the device.

One subprocess runs the whole script (``GPU_SCRIPT_TOY=1``, ``OUT`` a temporary
folder); the checks read what it wrote: the summary, the three result files,
their keys, finite float32 polar errors that obey the triangle inequality
through the exact-arithmetic iterate, and the README section rendered from them.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = ["polar_accuracy", "step_overhead", "convergence"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("results") / "gpu"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(GPU_SCRIPT_TOY="1", OUT=str(out), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  return proc, out


def _load(out, name):
  with open(out / f"{name}.json") as f:
    return json.load(f)


def test_exit_status_and_summary(toy_run):
  proc, out = toy_run
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  s = _load(out, "gpu_summary")
  assert s["toy"] is True and s["ok"] is True and s["backend"] == "cpu"
  assert s["device"].startswith("CPU")
  assert [p["name"] for p in s["parts"]] == PARTS
  for p in s["parts"]:
    assert p["status"] == "ok" and p["rc"] == 0 and p["seconds"] > 0, p
    assert (out / p["json"]).exists() and (out / p["log"]).exists()
  assert "summary" in proc.stdout


def test_every_json_names_the_device_and_no_absolute_path(toy_run):
  _, out = toy_run
  device = _load(out, "gpu_summary")["device"]
  assert _load(out, "polar_accuracy")["device"] == device
  assert _load(out, "convergence")["machine"]["device"] == device
  assert device.startswith(_load(out, "step_overhead")["device"])  # named without cores
  for name in PARTS + ["gpu_summary"]:
    text = (out / f"{name}.json").read_text()
    assert str(out) not in text and str(ROOT) not in text, name


def test_polar_accuracy(toy_run):
  _, out = toy_run
  d = _load(out, "polar_accuracy")
  assert d["tf32_is_float32"] is True and "repeat" in d["precision_note"]
  seen = {(r["impl"], r["method"], r["setting"]) for r in d["rows"]}
  assert seen == {("ours", m, s) for m in ("newton_schulz", "gram_newton_schulz")
                  for s in ("float32", "tf32", "bfloat16")} | {
                      ("optax_contrib", "newton_schulz", s) for s in ("float32", "tf32")}
  assert {r["cond"] for r in d["rows"]} == {1.0, 1e4}
  assert d["nonfinite"] == []
  by = {(r["impl"], r["method"], r["setting"], tuple(r["shape"]), r["cond"]): r
        for r in d["rows"]}
  for key, r in by.items():
    assert r["median_s"] > 0 and r["flops"] > 0 and r["finite"], key
    assert abs(r["max_abs_sigma_minus_1"]
               - max(1 - r["sigma_min"], r["sigma_max"] - 1)) < 1e-12
    if r["setting"] == "bfloat16":
      continue
    errs = [r[k] for k in ("rel_fro", "max_abs_sigma_minus_1", "max_abs_gain_minus_1",
                           "rounding_rel_fro", "exact_arith_rel_fro")]
    assert r["finite"] and all(math.isfinite(e) for e in errs), key
    # Distance to U V^T <= distance to the exact-arithmetic iterate + its distance to U V^T.
    assert r["rel_fro"] <= r["rounding_rel_fro"] + r["exact_arith_rel_fro"] + 1e-9, key
    assert r["rounding_rel_fro"] < 1e-2, key  # float32 rounding on tiny matrices
    if r["setting"] == "tf32":  # exact float32 on CPU: the same numbers
      assert r["rel_fro"] == pytest.approx(by[key[:2] + ("float32",) + key[3:]]["rel_fro"],
                                           abs=1e-5)


def test_step_overhead_and_convergence_keys(toy_run):
  _, out = toy_run
  so = _load(out, "step_overhead")
  assert set(so["optimizers"]) == {"adamw", "optax_muon", "muon", "scion"}
  for r in so["optimizers"].values():
    assert r["step_s"] > 0 and math.isfinite(r["step_over_adamw"])
  assert so["config"]["depth"] == 1 and so["fwd_bwd_s"] > 0
  cv = _load(out, "convergence")
  assert cv["complete"] is True and cv["config"]["preset"] == "toy"
  assert set(cv["step_time"]) == {"adamw", "scion"}
  assert sorted({r["optimizer"] for r in cv["runs"]}) == ["adamw", "scion"]
  assert len(cv["runs"]) == 4 and "target" in cv and "goal" in cv


def test_tables_render_the_gpu_section(toy_run, monkeypatch):
  from benchmarks import tables

  _, out = toy_run
  monkeypatch.setattr(tables, "RESULTS", str(out.parent))
  rendered = tables.gpu()
  assert "Toy sizes" in rendered and _load(out, "gpu_summary")["device"] in rendered
  for part in PARTS:
    assert f"**{part}.**" in rendered
  assert "NaN/Inf" not in rendered


def test_tables_say_when_gpu_figures_are_missing(tmp_path, monkeypatch):
  from benchmarks import tables

  monkeypatch.setattr(tables, "RESULTS", str(tmp_path))
  assert tables.gpu() == tables.GPU_MISSING
  assert "bash benchmarks/gpu.sh" in tables.GPU_MISSING
