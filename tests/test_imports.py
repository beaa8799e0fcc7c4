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


PUBLIC_LIMIT = 45  # names in __all__ of the top level, contrib and norms together


def test_the_public_surface_is_small_and_every_name_resolves():
  import optax_lmo as ol

  spaces = {"": ol, "contrib.": ol.contrib, "norms.": ol.norms}
  names = [prefix + n for prefix, mod in spaces.items() for n in mod.__all__]
  assert len(names) <= PUBLIC_LIMIT, names
  assert len(set(names)) == len(names)
  for prefix, mod in spaces.items():
    for n in mod.__all__:
      assert getattr(mod, n) is not None, prefix + n


def _old_spellings():
  """(module, old name, the object it must give) for every deprecated spelling."""
  import importlib

  import optax_lmo as ol

  out = []
  for mod, table in ((ol, ol._OLD), (ol.contrib, ol.contrib.REMOVED),
                     (ol.norms, ol.norms.OLD)):
    for name, (where, _) in table.items():
      path, attr = where.split(":")
      out.append((mod, name, getattr(importlib.import_module(path), attr)))
  return out


def test_old_spellings_warn_naming_the_new_one_and_still_work():
  import warnings

  import pytest

  import optax_lmo as ol

  changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
  for mod, name, target in _old_spellings():
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      old = getattr(mod, name)
    assert old is target, (mod.__name__, name)
    (w,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert f"{mod.__name__}.{name} is deprecated" in str(w.message), w.message
    assert f"`{name}`" in changelog or f"`{mod.__name__.replace('optax_lmo', 'ol')}.{name}`" \
        in changelog, name  # listed
  with pytest.raises(AttributeError, match="benchmarks/gpt/model.py"):
    ol.gpt_rules  # noqa: B018
  with pytest.raises(AttributeError, match="no attribute 'qk_clip'"):
    ol.qk_clip  # noqa: B018  never at the top level: no old spelling to keep
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    ol.nonexistent  # noqa: B018
