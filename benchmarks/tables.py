"""Markdown tables for the README from ``benchmarks/results/*.json``.

  python -m benchmarks.tables          # prints every table whose JSON exists

The README's benchmark section is this script's output, pasted: rerun it after
a benchmark to keep the two in step.
"""

from __future__ import annotations

import json
import os

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _load(name: str) -> dict | None:
  path = os.path.join(RESULTS, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _mark(ok: bool) -> str:
  return "met" if ok else "**missed**"


def orthogonalize() -> str | None:
  d = _load("orthogonalize.json")
  if d is None:
    return None
  by = {(r["width"], r["method"]): r for r in d["trees"]["rows"]}
  rows = []
  for w in sorted({r["width"] for r in d["trees"]["rows"]}):
    peer, ns = by[(w, "optax_contrib_muon_ns")], by[(w, "ours_jordan_ns")]
    ours = by[(w, "ours_default")]
    rows.append([
        w, f"{peer['median_s']:.3f}", f"{ns['median_s']:.3f}", f"{ours['median_s']:.3f}",
        f"{ours['speedup_vs_optax']:.2f}x",
        f"{peer['rel_fro_to_UVt']:.3f} / {ours['rel_fro_to_UVt']:.3f}",
        f"{peer['fraction_of_matmul']:.0%} / {ns['fraction_of_matmul']:.0%}",
    ])
  t = d["targets"]
  speed_ok = t["default_speedup_vs_optax"] >= t["default_speedup_target"]
  share_ok = t["standard_ns_fraction_of_matmul"] >= t["standard_ns_fraction_target"]
  head = (f"Orthogonalizing a 4-layer GPT tree (qkv, attention-out, mlp-in, mlp-out), "
          f"{d['device']}, jax {d['jax']}, optax {d['optax']}, medians of "
          f"`{d['command']}`; plain matmul {d['matmul']['flop_per_s'] / 1e9:.0f} GFLOP/s.\n\n")
  table = _table(
      ["width", "optax.contrib.muon NS (s)", "ours, same coeffs (s)", "ours, default (s)",
       "speedup (default)", "rel. Frobenius error to UV^T (optax / ours)",
       "share of matmul FLOP/s (optax / ours NS)"], rows)
  foot = (f"\n\nTargets: width-{t['width']} speedup >= {t['default_speedup_target']}x: "
          f"{t['default_speedup_vs_optax']:.2f}x, {_mark(speed_ok)} (error not worse: "
          f"{t['default_error_not_worse']}); standard Newton–Schulz >= "
          f"{t['standard_ns_fraction_target']:.0%} of matmul FLOP/s: "
          f"{t['standard_ns_fraction_of_matmul']:.0%}, {_mark(share_ok)}.")
  return head + table + foot


def sharding() -> str | None:
  d = _load("sharding.json")
  if d is None:
    return None
  by = {(r["optimizer"], r["width"], r["depth"], r["mesh"]): r for r in d["rows"]}
  rows = []
  for (opt, w, depth, mesh), ours in by.items():
    if opt != "ours":
      continue
    peer, scan = by.get(("optax", w, depth, mesh)), by.get(("optax-scan", w, depth, mesh))
    if peer is None or peer.get("error"):
      why = (peer or {}).get("error", "not run").split(":")[0]
      peer_cells = [why, "", "", ""]
    else:
      peer_cells = [peer["collectives"], scan["in_loop"] if scan else "",
                    f"{peer['bytes_over_matrices']:.2f}", f"{peer['flops_over_ideal']:.2f}"]
    rows.append([w, depth, mesh, ours["collectives"], ours["in_loop"],
                 f"{ours['bytes_over_matrices']:.2f}", f"{ours['flops_over_ideal']:.2f}",
                 *peer_cells])
  m = d["meta"]
  head = (f"One update on {m['devices']} simulated CPU devices, {m['sharding']}, from the "
          f"compiled HLO (exact). Bytes: summed per-device collective output over the "
          f"matrices' bytes. Flops: per-device flops over single-device flops / 8. optax's "
          f"in-loop count is with its Newton–Schulz loop kept rolled.\n\n")
  return head + _table(["width", "depth", "mesh", "ours: collectives", "in loop", "bytes",
                        "flops", "optax: collectives", "in loop", "bytes", "flops"], rows)


SECTIONS = {"orthogonalize": orthogonalize, "sharding": sharding}


def main() -> None:
  for name, fn in SECTIONS.items():
    text = fn()
    if text is not None:
      print(f"### {name}\n\n{text}\n")


if __name__ == "__main__":
  main()
