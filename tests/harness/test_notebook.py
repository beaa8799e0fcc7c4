"""examples/quickstart.ipynb is saved with its outputs, and runs top to bottom in a fresh kernel.

The docs render the saved outputs (docs/conf.py does not execute notebooks), so
the saved notebook must hold the outputs of its current cells:
``make notebook`` (scripts/execute_notebook.py) refreshes them.
"""

import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
sys.path.insert(0, str(ROOT / "scripts"))
import execute_notebook  # noqa: E402


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def _kinds(cell) -> list[str]:
  """What a cell shows: its output types and mime types, not their values."""
  kinds = []
  for o in cell.outputs:
    if o.output_type == "stream":
      kinds.append(f"stream:{o.name}")
    elif o.output_type in ("display_data", "execute_result"):
      kinds.append(" ".join(sorted(o.data)))
    else:
      kinds.append(o.output_type)
  return kinds


def test_notebook_says_what_it_needs():
  first = nbformat.read(NOTEBOOK, as_version=4).cells[0]
  assert first.cell_type == "markdown"
  assert 'pip install "optax-lmo[examples]"' in first.source
  imports = "\n".join(c.source for c in _code_cells(nbformat.read(NOTEBOOK, as_version=4)))
  for module, package in (("flax", "flax"), ("orbax", "orbax-checkpoint"),
                          ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")):
    if f"import {module}" in imports or f"from {module}" in imports:
      assert package in first.source, package


def test_notebook_is_saved_with_the_outputs_the_docs_show():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  cells = _code_cells(nb)
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "run in order"
  outputs = [o for c in cells for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
  data = [o.data for o in outputs if o.output_type in ("display_data", "execute_result")]
  assert any("image/png" in d for d in data), "the figure"
  assert any("<table" in d.get("text/html", "") for d in data), "the describe table"
  text = "".join(o.get("text", "") for o in outputs)
  assert "parameters equal after a step: True" in text, text[-500:]


def test_docs_render_the_example_notebook_itself():
  docs_copy = ROOT / "docs" / "quickstart.ipynb"
  assert docs_copy.is_symlink() and docs_copy.resolve() == NOTEBOOK.resolve()


def test_notebook_runs_and_shows_what_is_saved():
  saved = nbformat.read(NOTEBOOK, as_version=4)
  start = time.perf_counter()
  nb = execute_notebook.execute(NOTEBOOK, timeout=300)
  seconds = time.perf_counter() - start
  errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  text = "".join(o.get("text", "") for c in _code_cells(nb) for o in c.outputs)
  assert "parameters equal after a step: True" in text, text[-500:]
  for i, (run, kept) in enumerate(zip(_code_cells(nb), _code_cells(saved), strict=True)):
    assert run.source == kept.source
    assert _kinds(run) == _kinds(kept), f"code cell {i}: saved outputs are stale (make notebook)"
  print(f"quickstart.ipynb ran in {seconds:.1f} s")
