"""Smoke test of an installed optax_lmo: import, one Scion step on a toy tree, ``describe``.

``make wheel-smoke`` builds the wheel, installs it with only the core dependencies
(jax, jaxlib, optax, chex) into a fresh virtual environment and runs this file
with that environment's Python, so it checks the package as ``pip install
optax-lmo`` delivers it; it fails if ``optax_lmo`` comes from anywhere else.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

import optax_lmo as ol


def main() -> None:
  where = pathlib.Path(ol.__file__).resolve()
  prefix = pathlib.Path(sys.prefix).resolve()
  assert prefix in where.parents, f"optax_lmo imported from {where}, not from {prefix}"
  extras = [m for m in ("flax", "orbax", "matplotlib", "sklearn") if importlib.util.find_spec(m)]
  assert not extras, f"only the core dependencies should be installed, found {extras}"

  params = {"hidden": {"kernel": jnp.eye(8)[:, :4], "bias": jnp.zeros(4)},
            "head": {"kernel": jnp.eye(4)[:, :3]}}
  tx = ol.scion(0.1)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: -jnp.ones_like(p), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new)
  assert all(jax.tree.leaves(moved)), moved

  table = repr(ol.describe(tx, params))
  for leaf in ("hidden/kernel", "hidden/bias", "head/kernel"):
    assert leaf in table, table
  print(table)
  print(f"optax_lmo {where.parent} (jax {jax.__version__}, optax {optax.__version__}): ok")


if __name__ == "__main__":
  main()
