"""Runs a notebook top to bottom in a fresh kernel and saves it with its outputs.

``make notebook`` runs ``examples/quickstart.ipynb`` this way, from the
repository root. The docs show the saved outputs (they do not execute the
notebook), so run it again after changing the notebook or what it calls;
``tests/harness/test_notebook.py`` executes it too and checks the saved outputs are
those of the current cells.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]


def execute(path: pathlib.Path, timeout: int = 600) -> nbformat.NotebookNode:
  """The notebook at ``path``, executed in a fresh ``python3`` kernel started at the repo root."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}},
                                   record_timing=False)
  client.execute()  # raises CellExecutionError naming the cell on the first error
  return nb


def main(argv: list[str]) -> None:
  for name in argv or ["examples/quickstart.ipynb"]:
    path = (ROOT / name).resolve()
    start = time.perf_counter()
    nb = execute(path)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{path.relative_to(ROOT)}: executed in {time.perf_counter() - start:.0f} s, saved")


if __name__ == "__main__":
  main(sys.argv[1:])
