"""benchmarks/gpu.sh: its plan fits the device budget, and in toy mode every part runs on CPU.

``GPU_SCRIPT_PLAN=1`` prints the real run's parts, caps and commands without
running them: convergence first, each part's cap within the budget, the budget
within one device call, and the sweep at the settings it claims. One
subprocess runs the whole script in toy mode (``GPU_SCRIPT_TOY=1``, ``OUT`` a
temporary folder); the checks read what it wrote: the summary, the three result
files, their keys, finite float32 polar errors that obey the triangle
inequality through the exact-arithmetic iterate, and the docs section rendered
from them.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARTS = ["convergence", "polar_accuracy", "step_overhead"]
CALL_S = 600  # the longest single command on the device machine


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("results") / "gpu"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(GPU_SCRIPT_TOY="1", OUT=str(out), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  return proc, out


def _plan(**env_extra) -> tuple[int, list[tuple[str, int, list[str]]]]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_SCRIPT_")}
  env.update(GPU_SCRIPT_PLAN="1", PYTHON="python3", **env_extra)
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  budget = int(proc.stdout.split("budget: ")[1].split(" s")[0])
  parts = [(w[1], int(w[2]), w[3:]) for line in proc.stdout.splitlines()
           if (w := line.split())[0] == "plan"]
  return budget, parts


def _flag(cmd: list[str], name: str) -> list[str]:
  """The values after ``name`` in ``cmd``, up to the next flag."""
  i = cmd.index(name) + 1
  j = next((k for k in range(i, len(cmd)) if cmd[k].startswith("--")), len(cmd))
  return cmd[i:j]


def test_plan_fits_the_device_budget():
  budget, parts = _plan()
  assert [p[0] for p in parts] == PARTS
  caps = {name: cap for name, cap, _ in parts}
  assert sum(caps.values()) + 15 <= budget <= CALL_S - 60  # room to start up and copy back
  assert caps["convergence"] >= 300
  assert caps["polar_accuracy"] <= 60 and caps["step_overhead"] <= 75


def test_plan_runs_the_best_found_settings_at_shakespeare_char_shape():
  from benchmarks import convergence as cv

  _, parts = _plan()
  cmd = dict((name, c) for name, _, c in parts)["convergence"]
  assert _flag(cmd, "--preset") == ["shakespeare_char"] and "--tuned" in cmd
  assert _flag(cmd, "--steps") == ["800"] and _flag(cmd, "--extend") == ["0"]
  assert sorted(_flag(cmd, "--optimizers")) == ["adamw", "optax_muon", "scion"]
  shape = dict(width=384, depth=6, heads=6, seq=256, batch=64)  # nanoGPT's shakespeare_char
  assert shape.items() <= cv.PRESETS["shakespeare_char"].items()
  points = int(_flag(cmd, "--points")[0])
  centers = {o: g.center for o, g in cv.TUNED.items()}
  # The grids around the best settings of the cpu sweeps (ablation.json, convergence.json).
  expect = {"adamw": [7.5e-4, 1.5e-3, 3e-3], "optax_muon": [0.005, 0.01, 0.02],
            "scion": [2**-12, 2**-11, 2**-10]}
  for opt, lrs in expect.items():
    assert cv.grid(opt, points, centers) == pytest.approx(lrs), opt
  scion = cv.TUNED["scion"]
  assert (scion.init, scion.hidden_radius, scion.output_radius, scion.decay_frac) == (
      "rms", 48.0, 160.0, 0.5)
  step = dict((name, c) for name, _, c in parts)["step_overhead"]
  assert [_flag(step, f)[0] for f in ("--width", "--depth", "--heads", "--seq")] == [
      "768", "12", "12", "1024"]


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
  assert set(so["optimizers"]) == {"adamw", "optax_muon", "scion"}
  for r in so["optimizers"].values():
    assert r["step_s"] > 0 and r["update_s"] > 0 and math.isfinite(r["step_over_adamw"])
  assert so["config"]["depth"] == 1 and so["config"]["chain"] == 2 and so["fwd_bwd_s"] > 0
  cv = _load(out, "convergence")
  assert cv["complete"] is True and cv["config"]["preset"] == "toy"
  assert set(cv["step_time"]) == {"adamw", "optax_muon", "scion"}
  assert sorted({r["optimizer"] for r in cv["runs"]}) == ["adamw", "optax_muon", "scion"]
  assert len(cv["runs"]) == 6 and "target" in cv and "goal" in cv
  scion = [r for r in cv["runs"] if r["optimizer"] == "scion"]
  assert all((r["init"], r["hidden_radius"], r["output_radius"], r["decay_frac"])
             == ("rms", 48.0, 160.0, 0.5) for r in scion)


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
