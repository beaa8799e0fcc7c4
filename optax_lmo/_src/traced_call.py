"""The call ``infer_rules`` traces: its example arguments, the model output it returns, and errors.

:func:`select_output` picks the model output out of what the traced function
returns (an array, ``(output, rest)``, a Hugging Face ``ModelOutput`` or any
mapping or dataclass with ``logits``); :func:`call_failed` turns an error raised
inside the model's call into one that says the example arguments do not fit and
where the call failed. Neither rebuilds the returned value (a frozen dataclass
cannot be rebuilt), so the error path cannot crash.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp


def is_array(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (int, float, bool))


def split_static(tree):
  """``(arrays, rebuild)``: the array leaves of ``tree`` and a function putting them back."""
  leaves, treedef = jax.tree.flatten(tree)
  where = [k for k, x in enumerate(leaves) if is_array(x)]

  def rebuild(arrays):
    out = list(leaves)
    for k, a in zip(where, arrays, strict=True):
      out[k] = a
    return treedef.unflatten(out)

  return [leaves[k] for k in where], rebuild


def _logits(out):
  """``out["logits"]`` or ``out.logits`` where ``out`` is a mapping or dataclass holding it."""
  try:
    if isinstance(out, Mapping):
      x = out.get("logits")
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
      x = getattr(out, "logits", None)
    else:
      return None
  except Exception:  # noqa: BLE001  (a mapping whose lookup fails has no logits to offer)
    return None
  return x if is_array(x) else None


def _leading(out):
  """The array at the front of ``out``: itself, the first element of a tuple (recursively:
  ``((logits, paddings), updates)``), or the ``logits`` of a mapping or dataclass."""
  for _ in range(8):
    if is_array(out):
      return out
    if (logits := _logits(out)) is not None:
      return logits  # a ModelOutput, {"logits": ..., ...}
    if not (isinstance(out, (tuple, list)) and out):
      return None
    out = out[0]  # (logits, state updates), (loss, aux)
  return None


def select_output(out, output=None):
  """The model output in a traced function's return value (see ``infer_rules(output=...)``).

  Args:
    out: what the function returned.
    output: ``None`` (an array; the first element of a tuple, recursively, as in
      ``((logits, paddings), updates)``; the ``logits`` of a mapping or dataclass,
      such as a Hugging Face ``ModelOutput``), an index into the returned tuple,
      or a callable on the returned value.

  Returns:
    A pytree whose floating-point arrays are the model output.
  """
  if callable(output):
    picked = output(out)
  elif output is not None:
    picked = out[output]
  elif (picked := _leading(out)) is not None:
    pass
  else:
    raise ValueError(
        f"infer_rules cannot tell which part of the function's return value is the model"
        f" output: it returned {shapes(out)}. Pass output=<index> or output=lambda out:"
        " <the logits or the loss>, e.g. output=lambda out: out['scores'] (a mapping or"
        " dataclass with a 'logits' entry is read without it).")
  if not any(is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)
             for x in jax.tree.leaves(picked)):
    raise ValueError(
        f"infer_rules: the model output {shapes(picked)} holds no floating-point array, so no"
        " layer can be its output layer. Select the logits or the loss with output=...")
  return picked


def shapes(tree, depth: int = 0) -> str:
  """``"(f32[2,10], {'batch_stats': ...})"``: a value, its arrays as their types.

  Reads the value without rebuilding it, and never raises: what it cannot read
  shows as its type's name.
  """
  try:
    return _shapes(tree, depth)
  except Exception:  # noqa: BLE001  (an error message must not fail)
    return type(tree).__name__


def _shapes(x, depth: int) -> str:
  if is_array(x):
    aval = getattr(x, "aval", None) or jax.core.ShapedArray(x.shape, x.dtype)
    return aval.str_short(short_dtypes=True)
  if depth > 4:
    return "..."
  if isinstance(x, Mapping):
    name = "" if type(x) is dict else type(x).__name__
    return name + "{" + ", ".join(f"{k!r}: {_shapes(v, depth + 1)}" for k, v in x.items()) + "}"
  if isinstance(x, (tuple, list)):
    inner = ", ".join(_shapes(v, depth + 1) for v in x)
    return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' if len(x) == 1 else ''})"
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    fields = ", ".join(f"{f.name}={_shapes(getattr(x, f.name, None), depth + 1)}"
                       for f in dataclasses.fields(x))
    return f"{type(x).__name__}({fields})"
  return repr(x) if x is None or isinstance(x, (bool, int, float, str)) else type(x).__name__


_JAX = os.path.dirname(jax.__file__) + os.sep
# Library plumbing between the call and the layer that failed (a module's call wrapper).
_PLUMBING = tuple(os.sep.join(("flax", *p.split("/"))) for p in (
    "core/", "linen/module.py", "linen/transforms.py", "nnx/graph.py", "nnx/transforms/"))


def _where(error: BaseException) -> str:
  """``" in Dense.__call__ (flax/linen/linear.py:287)"``: the error's last frame in a model."""
  found, tb = None, error.__traceback__
  while tb is not None:
    name = tb.tb_frame.f_code.co_filename
    if not (name.startswith(_JAX) or name == __file__ or any(p in name for p in _PLUMBING)):
      found = tb
    tb = tb.tb_next
  if found is None:
    return ""
  code = found.tb_frame.f_code
  path = os.sep.join(code.co_filename.split(os.sep)[-3:])
  return f" in {getattr(code, 'co_qualname', code.co_name)} ({path}:{found.tb_lineno})"


def call_failed(error: Exception, call: str) -> Exception:
  """The error to raise when the traced call ``call`` raised ``error``: the arguments do not fit.

  Args:
    error: what the model's call raised (chain it: ``raise call_failed(e, ...) from e``).
    call: the call as the user wrote it, its arrays as their types, e.g.
      ``"apply(params, f32[4,5])"``.

  Returns:
    A ``TypeError`` (for a ``TypeError``) or ``ValueError`` naming the call, where it
    failed and the original error.
  """
  said = f"{type(error).__name__}: {error}".splitlines()[0]
  if isinstance(error, jax.errors.ConcretizationTypeError):
    what = "the model cannot be traced on the example arguments"
    fix = ("infer_rules traces the call with jax.make_jaxpr, so values that steer Python"
           " control flow must be Python values (train=True), not arrays.")
  else:
    what = "the example arguments do not fit the model"
    fix = ("Pass example arguments that fit the model: arrays shaped and typed like a"
           " training batch, in the order and with the keywords the call takes (any"
           " jax.ShapeDtypeStruct works).")
  cls = TypeError if isinstance(error, TypeError) else ValueError
  return cls(f"infer_rules: {what}: {call} failed{_where(error)} with {said} {fix}")


__all__ = ["call_failed", "is_array", "select_output", "shapes", "split_static"]
