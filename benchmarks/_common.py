"""What the benchmark scripts share: where results go, the machine's name, the sweep flags."""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


def device_name(cores: bool = True) -> str:
  """``"CPU: <model>, <n> cores"`` (the core count only with ``cores``), else the accelerator."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    model = platform.processor() or "cpu"
    try:
      with open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"CPU: {model}, {os.cpu_count()} cores" if cores else f"CPU: {model}"
  return f"{dev.platform.upper()}: {dev.device_kind}"


def sweep_parser(doc: str, full: dict, reduced: dict, out: str) -> argparse.ArgumentParser:
  """The flags of the GPT sweeps (``lr_transfer``, ``convergence``); callers add their own."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--full", action="store_true",
                      help=f"the bigger configuration {full} instead of {reduced}")
  parser.add_argument("--data", default=DEFAULT_DATA,
                      help="a UTF-8 text file (default: ../shared/data/tinyshakespeare.txt)")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--steps", type=int, help="override the configuration's steps")
  parser.add_argument("--batch", type=int, help="override the configuration's batch")
  parser.add_argument("--seq", type=int, help="override the configuration's sequence length")
  parser.add_argument("--eval-batches", type=int, dest="eval_batches")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--report", action="store_true",
                      help="no training: print the table and redraw the PNG from --out")
  parser.add_argument("--resume", action="store_true",
                      help="keep the runs already in --out when its config matches this one")
  parser.add_argument("--out", default=os.path.join(RESULTS, out))
  return parser


def parse_sweep(parser: argparse.ArgumentParser, argv, full: dict, reduced: dict):
  """Parses ``argv``, then fills each size flag left unset from ``full`` or ``reduced``."""
  args = parser.parse_args(argv)
  for k, v in (full if args.full else reduced).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  return args


def write_json(result: dict, path: str) -> None:
  """Writes ``result`` to ``path`` (creating its folder), one key per line at the top level."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
