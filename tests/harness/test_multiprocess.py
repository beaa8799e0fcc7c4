"""The GPT example on 2 processes x 4 CPU devices (jax.distributed, gloo) matches 1 process x 8.

Runs ``scripts/multiprocess.sh --short``: a tiny GPT (width 64, depth 2, 10
steps, ``--mesh data=2,fsdp=4``) as two processes on a loopback coordinator,
stopped at step 5 and resumed (the multi-process orbax save and restore), and
as one process with 8 simulated devices; the script fails unless every train
and validation loss of the two ``log.jsonl`` files agrees within its tolerance.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "multiprocess.sh"
TOL = 1e-4  # the script's own tolerance (nats), checked here again from its output


def _unavailable() -> str | None:
  """Why this machine cannot run the check, or ``None``."""
  if shutil.which("bash") is None or sys.platform == "win32":
    return "needs bash"
  try:
    from jax._src.lib import _jax
  except ImportError:
    return "jaxlib has no _jax extension to look for gloo in"
  if not hasattr(_jax, "make_gloo_tcp_collectives"):
    return "this jaxlib was built without gloo CPU collectives"
  if not hasattr(__import__("jax").distributed, "initialize"):
    return "jax.distributed is unavailable"
  return None


@pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))
def test_two_processes_match_one_process_with_eight_devices():
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      ["bash", str(SCRIPT), "--short"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-6000:]
  assert "resumed from step 5" in out, out[-3000:]
  m = re.search(r"max_abs_diff=(\S+) points=(\d+)", out)
  assert m, out[-3000:]
  assert float(m.group(1)) <= TOL and int(m.group(2)) >= 10, m.group(0)
