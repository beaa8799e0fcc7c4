"""Rules inferred from the model's own computation: roles and matrix views from its jaxpr.

:func:`infer_rules` traces the model's apply (or loss) function with
``jax.make_jaxpr`` (nothing runs) and follows every parameter leaf through view
ops (reshape, transpose, casts, broadcasts, slices, the per-iteration slice of
``scan``) and into sub-jaxprs (``jit``, ``custom_jvp_call``, ``custom_vjp_call``,
``checkpoint``, ``scan``, ``while``, ``cond``) to the ops that consume it:

- a ``gather`` indexed by integers (an ``Embed`` lookup): embedding -> ColNorm,
  fan-in = the indexed axis;
- a ``dot_general``: fan-in = the parameter's contracting dims, batch = its
  batch dims and any scanned or indexed-away axis, fan-out = the rest; an
  input layer when the other operand derives from the function's real-valued
  inputs along the data path, passing no parameter's product (a mask
  multiplied into a hidden activation leaves it hidden) -> ``Spectral(input_layer=
  True)``; an output layer when the product reaches the function's output
  without passing another parameter's product -> RowNorm (or Sign); otherwise
  hidden -> Spectral;
- a ``conv_general_dilated`` kernel: fan-in = spatial + input-feature dims,
  fan-out = output-feature dim -> SpectralConv (RowNorm / Sign as an output),
  at ``hidden_radius`` times its number of taps unless ``conv_radius`` is given;
  a grouped or depthwise one (``feature_group_count=G``) -> ``SpectralConv(groups=G)``,
  each group its own matrix;
- only elementwise uses (biases, norm gains, added tables) or learned tokens
  -> BiasRMS.

A leaf both gathered and used as an output (tied embedding, ``Embed.attend``)
gets Sign for both uses [S, Rec. 3.1(iii)].

References:
  Pethick et al., Training Deep Learning Models with Norm-Constrained LMOs,
  ICML 2025, arXiv:2502.07529.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from optax_lmo._src import conv as conv_lib
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import trace
from optax_lmo._src.spec import MatrixSpec


def infer_rules(
    fn_or_module,
    *example_args,
    embed_radius: float = rules_lib.EMBED_RADIUS,
    hidden_radius: float = rules_lib.HIDDEN_RADIUS,
    conv_radius: float | None = None,
    output_radius: float = rules_lib.OUTPUT_RADIUS,
    bias_radius: float = rules_lib.BIAS_RADIUS,
    output_norm: str = "rownorm",
    output: int | Callable[[Any], Any] | None = None,
    rules: rules_lib.Rules | rules_lib.RuleList | None = None,
    strict: bool = True,
    blocks: str = "fused",
    **example_kwargs,
) -> rules_lib.Rules:
  """Rules for every parameter leaf, from the ops that use it in the traced model.

  Two call forms: ``infer_rules(fn, params, *args, **kwargs)`` where
  ``fn(params, *args, **kwargs)`` is the model's apply or loss function
  (``lambda p, x: model.apply({"params": p}, x)`` for Flax linen), and
  ``infer_rules(module, *args, **kwargs)`` for a Flax NNX module (its
  ``nnx.Param`` state; call ``module.train()`` first to trace the training
  path). Array arguments may be ``jax.ShapeDtypeStruct``; other arguments
  (``train=True``, ``mutable=["batch_stats"]``) are passed through unchanged,
  and PRNG keys (``rngs={"dropout": key}``) are traced as data.

  **The model output.** The output layer is the product whose result reaches
  the *model output* without passing another parameter's product; which part
  of the returned value is the model output is ``output``:

  - ``None`` (the default): a returned array is the output (logits, or a
    scalar loss); a returned tuple is ``(output, rest)``, its first element
    read the same way: a linen ``mutable=`` call's ``(logits, updates)``, a
    ``has_aux`` loss's ``(loss, aux)``, ``((logits, paddings), updates)``. The
    rest is ignored (updated batch statistics are not an output). A mapping or
    dataclass with a ``logits`` entry (a Hugging Face ``ModelOutput``) gives
    its logits. Any other return value is an error asking for ``output``.
  - an ``int``: that element of the returned tuple.
  - a callable: applied to the returned value, gives the output (a pytree:
    every floating-point array in it is an output), e.g.
    ``output=lambda out: out["logits"]``.

  **Your own rules first.** ``rules=[(regex, Group), ...]`` (or a
  :class:`~optax_lmo.Rules` holding such a list) routes the leaves it matches
  (``re.search`` on the leaf path, the first match wins) and the inference
  routes the rest; user rules listed first win. A leaf a user rule matches is
  not inferred, so it cannot fail the model.

  **Fused projections and heads.** Where the model cuts a product's result
  along its out-features right after the product (``jnp.split`` or equal
  slices: a fused QKV kernel; a reshape into ``(heads, d_head)``), ``blocks``
  says what the kernel's matrices are: ``"fused"`` (the default) one matrix, as
  the references do; ``"split"`` one per piece (q, k and v:
  ``MatrixSpec(out_blocks=3)``); ``"per_head"`` one per head of each piece
  (``out_blocks=3 * heads``). The evidence names the cut either way.

  **Learned tokens.** A parameter joined with data (a CLS token concatenated
  in front of the patches), or the activation side of a product with another
  parameter (a MAP head's probe, tiled over the batch), is a vector: BiasRMS.
  Parameters joined by ``concatenate`` before one product (an
  ``OptimizedLSTMCell``'s gate kernels) each get that product's role.

  **Leaves the trace does not decide.** A matrix leaf used in two incompatible
  roles, never used, or consumed by an op the tracer does not cover (say
  ``jnp.sort(W)``): with ``strict=True`` one error naming every such leaf, why,
  and the ``rules=`` entries to write; with ``strict=False`` a warning per leaf,
  and the leaf gets BiasRMS at ``bias_radius`` if it is vector-shaped (at most
  one axis longer than 1), else the name-based :func:`~optax_lmo.default_rules`
  group (or, for a leaf with ndim >= 3 that the names cannot view,
  ``Frobenius`` on the whole leaf at ``hidden_radius``), marked ``"vector
  fallback: <why>"``, ``"name fallback: <why>"`` or ``"Frobenius fallback:
  <why>"`` in its ``evidence``, as :func:`~optax_lmo.describe` shows.

  **Example arguments that do not fit.** When the model's own call fails on
  them, the error says so, names the call and the layer where it failed, and
  chains the model's error.

  Args:
    fn_or_module: the apply / loss function, or an NNX module.
    *example_args: ``params, *args`` for a function; ``*args`` for a module.
    embed_radius: radius of embedding tables.
    hidden_radius: radius of the input layer and of the hidden matrices and
      convolutions. The defaults (1, 48, 160, 1 by role) are constrained Scion's
      best 1000-step runs of ``benchmarks/ablation.py``, at ``lr = 2**-11``
      (``docs/radii.md``).
    conv_radius: radius of convolution kernels that are not the output layer;
      ``None``: ``hidden_radius`` times the kernel's taps ``kh*kw`` (432 for
      3x3 at the default 48), which cancels the ``1/(kh*kw)`` of
      :class:`~optax_lmo.norms.SpectralConv`'s factor: a kernel at this radius
      steps like a dense layer from ``c_in`` to ``c_out`` at ``hidden_radius``
      in every tap (at hidden radius 3 the CNN of ``benchmarks/digits.py``
      trained clearly worse at 3 and at ``3*sqrt(kh*kw)`` than at 27).
    output_radius: radius of the output layer (and of a tied embedding).
    bias_radius: radius of biases, gains and other elementwise leaves.
    output_norm: ``"rownorm"`` or ``"sign"``, the output layer's norm.
    output: which part of the function's return value is the model output
      (see above): ``None``, an index, or a callable on the returned value.
    rules: ``[(regex, Group), ...]`` routing the leaves they match ahead of the
      inference (see above).
    strict: raise on a leaf the trace does not decide; ``False``: warn and fall
      back (see above).
    blocks: ``"fused"``, ``"split"`` or ``"per_head"``: the matrices of a kernel
      whose result the model cuts (see above).
    **example_kwargs: keyword arguments of the call (a model keyword named like
      one of the arguments above goes through a ``lambda``).

  Returns:
    Strict :class:`~optax_lmo.Rules`: the user ``rules`` first, then one
    exact-path rule per other leaf, each Group carrying its ``role`` and the
    ``evidence`` it was decided on.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_lmo as ol
    >>> model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
    >>> x = jnp.zeros((4, 64))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x), params, x)
    >>> [(type(g.norm).__name__, g.role) for _, g in rules.rules][1::2]
    [('Spectral', 'input'), ('RowNorm', 'output')]

    A hand-written group for the head, the rest inferred:

    >>> head = ol.Group(ol.norms.Sign(), 100.0, role="output")
    >>> rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x), params, x,
    ...                        rules=[(r"layers_2/kernel$", head)])
    >>> g = rules.group_for("layers_2/kernel", params["layers_2"]["kernel"])
    >>> type(g.norm).__name__, g.radius, g.evidence
    ('Sign', 100.0, "user rule 'layers_2/kernel$'")
  """
  head = rules_lib.head_norm(output_norm)
  if blocks not in BLOCKS:
    raise ValueError(f"infer_rules: blocks must be one of {BLOCKS}, got {blocks!r}.")
  radii = dict(embedding=embed_radius, input=hidden_radius, hidden=hidden_radius,
               output=output_radius, tied=output_radius, vector=bias_radius, gain=bias_radius,
               conv=conv_radius)
  user = _user_rules(rules)
  params, uses = trace.trace_uses(fn_or_module, example_args, example_kwargs, output)
  fallback = rules_lib.default_rules(
      embed_radius=embed_radius, hidden_radius=hidden_radius, output_radius=output_radius,
      bias_radius=bias_radius, output_norm=output_norm, strict=True)
  out, undecided = [], []
  for i, (path, leaf) in enumerate(params):
    if any(re.search(pattern, path) for pattern, _ in user):
      continue
    try:
      group = _decide(uses.get(i, []), np.shape(leaf), head, radii, blocks)
    except trace.Unresolved as e:
      undecided.append((path, str(e)))
      if strict:
        continue
      group = _fallback(fallback, path, leaf, str(e), hidden_radius, bias_radius)
    out.append(("^" + re.escape(path) + "$", group))
  if strict and undecided:
    raise ValueError(_undecided_message(undecided))
  return rules_lib.Rules(user + tuple(out), strict=True)


def _undecided_message(undecided: list[tuple[str, str]]) -> str:
  """The one strict-mode error for every leaf the trace does not decide, with the fix."""
  rule = lambda path: f"(r\"^{re.escape(path)}$\", ol.Group(...))"
  fix = ("pass strict=False to warn and fall back to the name-based default_rules (a vector"
         " leaf, such as a (1, 1, d) token, to BiasRMS).")
  if len(undecided) == 1:
    (path, why), = undecided
    return (f"{path}: {why}. Route this leaf by hand ahead of the inference, e.g."
            f" infer_rules(..., rules=[{rule(path)}]), or {fix}")
  lines = [f"  {path}: {why}" for path, why in undecided]
  rules = ",\n         ".join(rule(path) for path, _ in undecided)
  return (f"infer_rules: the trace does not decide {len(undecided)} leaves:\n"
          + "\n".join(lines) + "\nRoute them by hand ahead of the inference:\n"
          f"  infer_rules(..., rules=[{rules}])\nor {fix}")


def _user_rules(rules) -> tuple[tuple[str, rules_lib.Group], ...]:
  """The ``rules=`` pairs of :func:`infer_rules`, each group's evidence naming its rule."""
  if rules is None:
    return ()
  if isinstance(rules, rules_lib.Rules):
    if callable(rules.rules) or rules.fallback is not None:
      raise TypeError("infer_rules(rules=...) takes (regex, Group) pairs, or Rules holding"
                      " only such pairs (no callable rules, no fallback).")
    rules = rules.rules
  pairs = tuple(rules_lib.Rules(tuple(rules)).rules)  # checks the patterns and groups
  return tuple((p, g if g.evidence else dataclasses.replace(g, evidence=f"user rule {p!r}"))
               for p, g in pairs)


def _fallback(names: rules_lib.Rules, path: str, leaf, why: str, radius: float,
              bias_radius: float) -> rules_lib.Group:
  """The non-strict group of a leaf the trace does not decide, with a warning naming it.

  A vector (at most one axis longer than 1: a ``(1, 1, d)`` CLS or probe token) gets
  BiasRMS at ``bias_radius``; any other leaf its name-based group, or Frobenius at
  ``radius`` where the names cannot view it.
  """
  if sum(n > 1 for n in np.shape(leaf)) <= 1:
    return _warned(path, why, rules_lib.Group(norms_lib.BiasRMS(), bias_radius, role="vector",
                                              evidence=f"vector fallback: {why}"))
  try:
    g = names.group_for(path, leaf)
    group = dataclasses.replace(g, evidence=f"name fallback: {why}")
  except ValueError:  # the names cannot view it either (ndim >= 3)
    group = rules_lib.Group(norms_lib.Frobenius(), radius,
                            evidence=f"Frobenius fallback: {why}")
  return _warned(path, why, group)


def _warned(path: str, why: str, group: rules_lib.Group) -> rules_lib.Group:
  warnings.warn(f"{path}: {why}; it gets {group.norm.name} at radius {group.radius:g}"
                f" ({group.evidence.split(':')[0]}). Route it by hand with"
                " infer_rules(..., rules=[(pattern, Group(...))]).", stacklevel=4)
  return group


def _spec_or_none(fan_in, fan_out, ndim) -> MatrixSpec | None:
  if ndim == 2 and tuple(fan_in) == (0,) and tuple(fan_out) == (1,):
    return None
  return MatrixSpec(tuple(fan_in), tuple(fan_out))


BLOCKS = ("fused", "split", "per_head")


def _matrix_group(use: trace.Use, shape, head: norms_lib.Norm, radii,
                  blocks: str = "fused") -> rules_lib.Group:
  """The group one matrix use asks for (role, norm, view, radius)."""
  radius = None
  if use.kind == "embed":
    # A lookup whose result is itself the output is a tied embedding and output.
    role, norm = ("tied", norms_lib.Sign()) if use.output else ("embedding", norms_lib.ColNorm())
  elif use.output:
    role, norm = "output", head
  elif use.kind == "conv":
    role, norm = ("input" if use.input else "hidden"), conv_lib.SpectralConv(groups=use.groups)
    taps = math.prod(shape[a] for a in use.fan_in[:-1])
    radius = radii["conv"] if radii["conv"] is not None else radii[role] * taps
  else:
    role = "input" if use.input else "hidden"
    norm = norms_lib.Spectral(input_layer=use.input)
  spec = MatrixSpec(use.fan_in, use.fan_out)
  if use.kind != "conv":
    spec = _spec_or_none(use.fan_in, use.fan_out, len(shape))
  evidence = use.evidence(role)
  cut = trace.result_blocks(use) if role in ("input", "hidden") else None
  if cut is not None:
    pieces, heads, said = cut
    k = {"fused": 1, "split": pieces, "per_head": pieces * heads}[blocks]
    if k > 1:
      spec = MatrixSpec(use.fan_in, use.fan_out, out_blocks=k)
    evidence += f"; {said} -> {blocks}" + (f" ({k} blocks)" if k > 1 else "")
  if radius is None:
    radius = radii[role]
  elif radii["conv"] is None:
    evidence += f"; radius {radii[role]:g} x {taps} taps"
  return rules_lib.Group(norm, radius, spec=spec, role=role, evidence=evidence)


def _decide(uses: list[trace.Use], shape, head, radii, blocks: str = "fused") -> rules_lib.Group:
  """One leaf's group from all its uses; raises :class:`trace.Unresolved`."""
  ndim = len(shape)
  unknown = [u for u in uses if u.kind == "unknown"]
  if unknown:
    raise trace.Unresolved("used by an op the tracer does not know: "
                           + ", ".join(sorted({u.detail for u in unknown})))
  reduced = sorted({u.detail for u in uses if u.kind == "reduce"})
  uses = [u for u in uses if u.kind not in ("reduce", "selected")]
  matrix = [u for u in uses if u.kind in ("embed", "dot", "conv")]
  elementwise = [u for u in uses if u.kind in ("elementwise", "token")]
  if not uses:
    if ndim >= 2 and reduced:
      raise trace.Unresolved(f"a matrix leaf used only by reductions ({', '.join(reduced)}):"
                             " no product gives its matrix view")
    if ndim >= 2:
      raise trace.Unresolved("a matrix leaf that the traced function never uses")
    used = f"used only by reductions ({', '.join(reduced)}); vector" if reduced else "never used"
    return rules_lib.Group(norms_lib.BiasRMS(), radii["vector"], role="vector", evidence=used)
  if matrix and elementwise:
    ops = sorted({u.detail for u in matrix + elementwise})
    raise trace.Unresolved("used both as a matrix and elementwise: " + ", ".join(ops))
  if elementwise:
    gone = {a for u in elementwise for a in u.batch if shape[a] > 1}  # size 1: no batch
    spec = None
    if gone:
      spec = MatrixSpec((), tuple(a for a in range(ndim) if a not in gone))
    gain = any(u.gain for u in elementwise)
    role = "gain" if gain else "vector"
    ops = ", ".join(sorted({u.detail for u in elementwise}))
    batch = f"; batch {tuple(sorted(gone))}" if gone else ""
    what = "a learned token" if any(u.kind == "token" for u in elementwise) else \
        "elementwise only"
    return rules_lib.Group(norms_lib.BiasRMS(), radii[role], spec=spec, role=role,
                           evidence=f"{what} ({ops}){batch}; {role}")
  groups = [_matrix_group(u, shape, head, radii, blocks) for u in matrix]
  roles = {g.role for g in groups}
  if "embedding" in roles and ("output" in roles or "tied" in roles):
    outs = [(g, u) for g, u in zip(groups, matrix, strict=True) if g.role in ("output", "tied")]
    g, u = next(((g, u) for g, u in outs if u.kind == "dot"), outs[0])
    kinds = "; ".join(sorted({f"{u.detail} ({g.role})" for g, u in zip(groups, matrix,
                                                                       strict=True)}))
    return rules_lib.Group(norms_lib.Sign(), radii["tied"], spec=g.spec, role="tied",
                           evidence=f"{kinds}; tied embedding and output -> Sign")
  distinct = {(type(g.norm), g.norm, g.spec, g.role) for g in groups}
  if len(distinct) > 1:
    what = "; ".join(sorted({g.evidence for g in groups}))
    raise trace.Unresolved(f"used in incompatible roles or views: {what}")
  g = groups[0]
  if len(groups) > 1:
    g = dataclasses.replace(g, evidence=f"{g.evidence} (x{len(groups)})")
  return g

