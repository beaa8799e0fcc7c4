"""The library imports and steps without the example dependencies.

``optax_lmo`` needs only jax, optax and chex; flax, orbax, tqdm and matplotlib
belong to the examples and the tests. A fresh interpreter that refuses to import
them must still import ``optax_lmo`` and take a step of ``scion`` and ``muon``.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ("flax", "orbax", "tqdm", "matplotlib")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {blocked!r}


    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ImportError(f"{{name}} is blocked: optax_lmo must not need it")
        return None


    sys.meta_path.insert(0, Block())

    import jax
    import jax.numpy as jnp
    import optax

    import optax_lmo as ol

    params = {{
        "embed": {{"embedding": jnp.ones((64, 16)) / 4}},
        "hidden": {{"kernel": jnp.eye(16)}},
        "head": {{"kernel": jnp.ones((16, 64)) / 64}},
    }}
    grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                         params)
    for name in ("scion", "muon"):
      tx = getattr(ol, name)(0.1)
      state = tx.init(params)
      updates, state = jax.jit(tx.update)(grads, state, params)
      new = optax.apply_updates(params, updates)
      for u, p, q in zip(jax.tree.leaves(updates), jax.tree.leaves(params),
                         jax.tree.leaves(new)):
        assert bool(jnp.all(jnp.isfinite(u))), name
        assert u.shape == p.shape and q.shape == p.shape, name
      assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)), name
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
).format(blocked=set(BLOCKED))


def test_library_runs_without_example_dependencies():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  proc = subprocess.run(
      [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.strip().splitlines()[-1] == "ok"


def test_every_requirement_has_a_tested_lower_bound():
  spec = importlib.util.spec_from_file_location("min_constraints",
                                                ROOT / "scripts" / "min_constraints.py")
  min_constraints = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(min_constraints)
  pins = min_constraints.lower_bounds(["dev", "examples"])
  for name in ("jax", "jaxlib", "optax", "chex", "flax", "orbax-checkpoint", "pytest"):
    assert name in pins, (name, pins)
  assert pins["jax"] == pins["jaxlib"], "jax and jaxlib are released together; pin both alike"


def test_the_top_level_is_small_and_every_name_resolves():
  import optax_lmo as ol

  assert len(ol.__all__) <= 26, ol.__all__
  for name in ol.__all__ + ol.contrib.__all__:
    getattr(ol.contrib if name in ol.contrib.__all__ else ol, name)


def test_moved_names_warn_and_are_the_contrib_objects():
  import warnings

  import optax_lmo as ol

  assert set(ol._MOVED) == set(ol.contrib.__all__) - ol._NEW_IN_CONTRIB
  for name in ol._MOVED:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      old = getattr(ol, name)
    assert old is getattr(ol.contrib, name), name
    assert any(issubclass(w.category, DeprecationWarning) and f"contrib.{name}" in str(w.message)
               for w in caught), name
  import pytest

  with pytest.raises(AttributeError, match="benchmarks/gpt/model.py"):
    ol.gpt_rules  # noqa: B018
  for name in ol._NEW_IN_CONTRIB:  # never at the top level: no old spelling to keep
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
      getattr(ol, name)
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    ol.nonexistent  # noqa: B018
