"""Hyperparameter checks every public constructor shares: a bad number is refused where it is given.

Each numeric hyperparameter has one rule, looked up by its name:

* ``learning_rate``, ``adam_learning_rate``: a finite number ``>= 0`` or an optax
  schedule (a callable, evaluated at every step, under ``jit`` too); a schedule is
  checked at step 0, where it is evaluated once here (a schedule that cannot be
  evaluated outside the optimizer is left to run);
* ``beta``, ``adam_b1``, ``adam_b2``: in ``[0, 1)``;
* ``keep_prob``: in ``(0, 1]``;
* ``eta`` (a tolerance), ``tau`` (a logit cap): a finite number ``> 0``;
* anything else (``weight_decay``, ``radius``, ``lr_mult``,
  ``dual_clip``, ``adam_eps``, ...): a finite number ``>= 0``.

A Python or NumPy number and a concrete array (every element) are checked; a
string or any other type is a ``TypeError``. A value injected with
``optax.inject_hyperparams`` is checked at ``init`` (where the injected number, or
the schedule's value at step 0, builds the optimizer) when ``init`` runs eagerly.
A traced value (injected and updated under ``jit``) cannot be checked: a
non-finite one makes the update non-finite, and
``optax.apply_if_finite(optax.identity(), ...)`` chained after the optimizer is
the guard that skips such a step (wrapped around the optimizer, apply_if_finite
checks the gradient only).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_lmo._src import spec as spec_lib

SCHEDULES = frozenset({"learning_rate", "adam_learning_rate"})  # may be callables
UNIT = frozenset({"beta", "adam_b1", "adam_b2", "beta2", "row_norm_beta2"})  # decays: [0, 1)
POSITIVE = frozenset({"eta", "tau"})  # finite and > 0
OPTIONAL = frozenset({"adam_learning_rate", "keep_prob", "weight_decay"})  # None has a meaning


def hyperparams(where: str, **values: Any) -> None:
  """Raises, naming ``where`` (the constructor) and the argument, for a value its rule refuses.

  Args:
    where: the public function (``"scion"``, ``"Group"``, ...), first in the message.
    **values: the arguments by name; the name picks the rule (see the module docstring).

  Raises:
    TypeError: a value that is not a number (nor a schedule where one is allowed).
    ValueError: a number outside its range, or not finite.

  Examples:
    >>> from optax_lmo._src import checks
    >>> checks.hyperparams("scion", learning_rate=float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: scion: learning_rate must be a finite number >= 0 or an optax schedule, got inf.
  """
  for name, x in values.items():
    _check(where, name, x)


def each_leaf(where: str, name: str, tree: Any) -> None:
  """:func:`hyperparams` on every leaf of a per-leaf tree (``None`` entries are skipped).

  The message names the leaf: ``scale_by_radius: radius at fc/kernel must be ...``.
  """
  in_range = _rule(name)[0]
  if all(type(x) in (float, int) and in_range(x) for x in jax.tree.leaves(tree)):
    return  # Python numbers in range (the trees the optimizers build from their rules)
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    _check(where, name, x, path)


def _rule(name: str) -> tuple[Callable[[Any], Any], str]:
  """``(in_range, what it must be)`` for the argument ``name``."""
  if name in UNIT:
    return (lambda v: (v >= 0) & (v < 1), "in [0, 1) (the decay of the running average, as in"
            f" optax; {name}=0.9 keeps 90% of it)")
  if name == "keep_prob":
    return (lambda v: (v > 0) & (v <= 1), "in (0, 1] (the probability that a leaf is updated"
            " at a step; None: every leaf every step)")
  if name in POSITIVE:
    return lambda v: np.isfinite(v) & (v > 0), "a finite number > 0"
  sched = " or an optax schedule" if name in SCHEDULES else ""
  return lambda v: np.isfinite(v) & (v >= 0), f"a finite number >= 0{sched}"


def _check(where: str, name: str, x: Any, path: tuple = ()) -> None:
  """The rule of ``name`` applied to ``x`` (a leaf at ``path`` of a per-leaf tree)."""
  if x is None and name in OPTIONAL:
    return
  in_range, must = _rule(name)
  if type(x) in (float, int) and in_range(x):
    return  # the common case, without NumPy
  if isinstance(x, jax.core.Tracer):
    return  # injected and traced: only apply_if_finite can guard it (module docstring)
  if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
    return  # spread over processes: no single host can read it
  label = f"{name} at {spec_lib.path_str(path)}" if path else name
  sched = " or an optax schedule" if name in SCHEDULES else ""
  if callable(x) and not isinstance(x, (jax.Array, np.ndarray, np.generic)):
    if name in SCHEDULES:
      _check_schedule(where, label, x, in_range)
      return
    raise TypeError(
        f"{where}: {label} must be a number, got the callable {x!r}. Only a learning rate"
        f" takes a schedule; to schedule {name}, inject it with optax.inject_hyperparams."
    )
  if isinstance(x, (bool, np.bool_)) or not isinstance(
      x, (numbers.Real, np.ndarray, np.generic, jax.Array)
  ):
    hint = ""
    if isinstance(x, str):
      try:
        hint = f" Pass the number {float(x)!r}, not a string."
      except ValueError:
        pass
    raise TypeError(
        f"{where}: {label} must be a number{sched}, got {x!r} (a {type(x).__name__}).{hint}"
    )
  v = np.asarray(x)
  if not (jnp.issubdtype(v.dtype, jnp.integer) or jnp.issubdtype(v.dtype, jnp.floating)):
    raise TypeError(f"{where}: {label} must be a real number{sched}, got {x!r} (dtype {v.dtype}).")
  if not np.all(in_range(v.astype(np.float64))):
    shown = str(v[()]) if v.ndim == 0 else v.tolist()  # -0.1, not float32's -0.10000000149
    raise ValueError(f"{where}: {label} must be {must}, got {shown}.")


def _check_schedule(where: str, label: str, schedule: Callable, in_range) -> None:
  """Refuses a learning-rate schedule whose value at step 0 is negative or not finite."""
  try:
    value = schedule(0)
  except Exception:  # noqa: BLE001  (a schedule that needs the optimizer's count runs there)
    return
  if isinstance(value, jax.core.Tracer) or not isinstance(
      value, (numbers.Real, np.ndarray, np.generic, jax.Array)) or isinstance(value, bool):
    return
  v = np.asarray(value)
  if not jnp.issubdtype(v.dtype, jnp.number) or np.all(in_range(v.astype(np.float64))):
    return
  shown = str(v[()]) if v.ndim == 0 else v.tolist()
  raise ValueError(
      f"{where}: {label} is a schedule whose value at step 0 is {shown}; a learning rate must"
      " be a finite number >= 0 at every step (a negative one steps uphill). Fix the"
      " schedule's values (init_value, peak_value, end_value...).")


__all__ = ["each_leaf", "hyperparams"]
