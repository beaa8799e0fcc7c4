"""The documentation builds with warnings as errors, and its API page lists every public name."""

import pathlib
import re
import subprocess
import sys

import pytest

import optax_lmo
import optax_lmo.norms

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_api_page_documents_every_public_name():
  api = (DOCS / "api.rst").read_text(encoding="utf-8")
  documented, module = set(), "optax_lmo"
  for line in api.splitlines():
    if m := re.match(r"\.\. currentmodule:: (\S+)", line):
      module = m.group(1)
    elif m := re.match(r"\.\. (?:auto\w+|py:\w+):: (\S+)", line):
      documented.add(f"{module}.{m.group(1)}")
  public = {f"optax_lmo.{n}" for n in optax_lmo.__all__ if n not in ("norms", "contrib")}
  public |= {f"optax_lmo.norms.{n}" for n in optax_lmo.norms.__all__}
  public |= {f"optax_lmo.contrib.{n}" for n in optax_lmo.contrib.__all__}
  assert not public - documented, f"docs/api.rst lacks {sorted(public - documented)}"


def test_readme_counts_the_public_names():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  said = int(re.search(r"(\d+) public names in all", readme).group(1))
  assert said == (len(optax_lmo.__all__) + len(optax_lmo.norms.__all__)  # as CHANGELOG counts
                  + len(optax_lmo.contrib.__all__))


def test_sphinx_build_has_no_warnings(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  pytest.importorskip("furo")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  for page in ("index", "quickstart", "install", "models", "routing", "optimizers", "flow",
               "radii", "porting", "polar", "heads", "qk_clip", "beyond", "sharding", "benchmarks",
               "guarantees", "limits", "api"):
    assert (tmp_path / "html" / f"{page}.html").exists(), page
  # The quickstart shows the notebook's saved outputs: the figure, the describe table, the text.
  quickstart = (tmp_path / "html" / "quickstart.html").read_text(encoding="utf-8")
  images = re.findall(r'<img [^>]*src="(_images/[^"]+\.png)"', quickstart)
  assert images and all((tmp_path / "html" / src).stat().st_size > 0 for src in images)
  assert "<table" in quickstart and "hidden" in quickstart  # ol.describe's _repr_html_
  assert "parameters equal after a step: True" in quickstart


def test_benchmark_page_blocks_match_the_results():
  """Every marked block of docs/benchmarks.md is what benchmarks.tables renders from the JSON."""
  from benchmarks import tables

  page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
  blocks = tables.BLOCK.findall(page)
  assert {b[1] for b in blocks} >= {"orthogonalize", "step_overhead", "convergence", "gpu"}
  assert tables.refresh(page) == page, "run: python -m benchmarks.tables --write docs/benchmarks.md"


def test_table_renders_one_cell_per_column():
  from benchmarks.tables import Col, table

  cols = (Col("name", lambda r: r["n"]), Col("x", lambda r: r.get("x"), "{:.2f}", "none"))
  lines = table([{"n": "a", "x": 1.0}, {"n": "b"}], cols).splitlines()
  assert lines == ["| name | x |", "|---|---|", "| a | 1.00 |", "| b | none |"]


def test_flow_page_names_modules_that_exist_in_at_most_eight_steps():
  """docs/flow.md's diagram: numbered steps 1..n (n <= 8), every module it names is in _src."""
  page = (DOCS / "flow.md").read_text(encoding="utf-8")
  diagram = page.split("```")[1]
  steps = [int(m) for m in re.findall(r"^\s*(\d) ", diagram, flags=re.M)]
  assert steps == list(range(1, len(steps) + 1)) and len(steps) <= 8
  named = set(re.findall(r"(?<![/\w])([a-z_]+)\.py\b", page))  # not tests/...
  src = ROOT / "optax_lmo" / "_src"
  assert named and all((src / f"{m}.py").exists() for m in named), named
  headings = re.findall(r"^## (\d)\. ", page, flags=re.M)
  assert [int(h) for h in headings] == steps  # one section per step
