"""Runs a test module's ``--worker`` in a subprocess that sees simulated CPU devices.

The device count is fixed when jax starts, so the tests that need a mesh run
their module again as a script with ``XLA_FLAGS`` set; the worker prints one JSON
line of results for the tests to check.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_worker(script: str, *args: str, devices: int = 8, timeout: float = 300) -> dict:
  """``python script --worker *args`` on ``devices`` CPU devices; its last stdout line as JSON."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  here = str(pathlib.Path(__file__).resolve().parent)  # _simulated itself, for the worker
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), here, env.get("PYTHONPATH")]))
  proc = subprocess.run(
      [sys.executable, script, "--worker", *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
