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
  inputs without passing another parameter's product -> ``Spectral(input_layer=
  True)``; an output layer when the product reaches the function's output
  without passing another parameter's product -> RowNorm (or Sign); otherwise
  hidden -> Spectral;
- a ``conv_general_dilated`` kernel: fan-in = spatial + input-feature dims,
  fan-out = output-feature dim -> SpectralConv (RowNorm / Sign as an output),
  at ``hidden_radius`` times its number of taps unless ``conv_radius`` is given;
- only elementwise uses (biases, norm gains) -> BiasRMS.

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

import numpy as np

from optax_lmo._src import conv as conv_lib
from optax_lmo._src import norms as norms_lib
from optax_lmo._src import rules as rules_lib
from optax_lmo._src import trace
from optax_lmo._src.spec import MatrixSpec


def infer_rules(
    fn_or_module,
    *example_args,
    embed_radius: float = 1.0,
    hidden_radius: float = 3.0,
    conv_radius: float | None = None,
    output_radius: float = 10.0,
    bias_radius: float = 1.0,
    output_norm: str = "rownorm",
    strict: bool = True,
    **example_kwargs,
) -> rules_lib.Rules:
  """Rules for every parameter leaf, from the ops that use it in the traced model.

  Two call forms: ``infer_rules(fn, params, *args)`` where ``fn(params, *args)``
  is the model's apply or loss function (``lambda p, x: model.apply({"params": p},
  x)`` for Flax linen), and ``infer_rules(module, *args)`` for a Flax NNX module
  (its ``nnx.Param`` state). Array arguments may be ``jax.ShapeDtypeStruct``;
  other arguments (``train=False``) are passed through unchanged. The function's
  outputs should be what the model predicts (logits) or the loss, not updated
  batch statistics.

  Args:
    fn_or_module: the apply / loss function, or an NNX module.
    *example_args: ``params, *args`` for a function; ``*args`` for a module.
    embed_radius: radius of embedding tables.
    hidden_radius: radius of the input layer and of the hidden matrices and
      convolutions (a real-valued input layer at radius 1 trained clearly worse
      on ``benchmarks/digits.py``).
    conv_radius: radius of convolution kernels that are not the output layer;
      ``None``: ``hidden_radius`` times the kernel's taps ``kh*kw`` (27 for
      3x3), which cancels the ``1/(kh*kw)`` of :class:`~optax_lmo.norms.SpectralConv`'s
      factor: a kernel at this radius steps like a dense layer from ``c_in`` to
      ``c_out`` at ``hidden_radius`` in every tap (the CNN of
      ``benchmarks/digits.py`` trained clearly worse at 3 and at ``3*sqrt(kh*kw)``).
    output_radius: radius of the output layer (and of a tied embedding).
    bias_radius: radius of biases, gains and other elementwise leaves.
    output_norm: ``"rownorm"`` or ``"sign"``, the output layer's norm.
    strict: raise on a leaf whose role is ambiguous, that is never used, or that
      meets an op the tracer does not know; ``False`` gives such a leaf the
      name-based :func:`~optax_lmo.default_rules` group, marked ``"name
      fallback: <why>"`` in its evidence.
    **example_kwargs: keyword arguments of the call.

  Returns:
    Strict :class:`~optax_lmo.Rules` with one exact-path rule per leaf, each
    Group carrying its ``role`` and the ``evidence`` it was decided on.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, optax_lmo as ol
    >>> model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
    >>> x = jnp.zeros((4, 64))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> rules = ol.infer_rules(lambda p, x: model.apply({"params": p}, x), params, x)
    >>> [(type(g.norm).__name__, g.role) for _, g in rules.rules][1::2]
    [('Spectral', 'input'), ('RowNorm', 'output')]
  """
  head = rules_lib.head_norm(output_norm)
  radii = dict(embedding=embed_radius, input=hidden_radius, hidden=hidden_radius,
               output=output_radius, tied=output_radius, vector=bias_radius, gain=bias_radius,
               conv=conv_radius)
  params, uses = trace.trace_uses(fn_or_module, example_args, example_kwargs)
  fallback = rules_lib.default_rules(
      embed_radius=embed_radius, hidden_radius=hidden_radius, output_radius=output_radius,
      bias_radius=bias_radius, output_norm=output_norm, strict=True)
  out = []
  for i, (path, leaf) in enumerate(params):
    try:
      group = _decide(uses.get(i, []), np.shape(leaf), head, radii)
    except trace.Unresolved as e:
      why = f"{path}: {e}"
      if strict:
        raise ValueError(f"{why}. Write a rule for this leaf by hand (a (pattern, Group) pair),"
                         " or pass strict=False to fall back to the name-based default_rules.") \
            from None
      try:
        g = fallback.group_for(path, leaf)
      except ValueError as name_error:
        raise ValueError(f"{why}; and the name-based fallback fails: {name_error}") from None
      group = dataclasses.replace(g, evidence=f"name fallback: {e}")
    out.append(("^" + re.escape(path) + "$", group))
  return rules_lib.Rules(tuple(out), strict=True)


def _spec_or_none(fan_in, fan_out, ndim) -> MatrixSpec | None:
  if ndim == 2 and tuple(fan_in) == (0,) and tuple(fan_out) == (1,):
    return None
  return MatrixSpec(tuple(fan_in), tuple(fan_out))


def _matrix_group(use: trace.Use, shape, head: norms_lib.Norm, radii) -> rules_lib.Group:
  """The group one matrix use asks for (role, norm, view, radius)."""
  radius = None
  if use.kind == "embed":
    # A lookup whose result is itself the output is a tied embedding and output.
    role, norm = ("tied", norms_lib.Sign()) if use.output else ("embedding", norms_lib.ColNorm())
  elif use.output:
    role, norm = "output", head
  elif use.kind == "conv":
    role, norm = ("input" if use.input else "hidden"), conv_lib.SpectralConv()
    taps = math.prod(shape[a] for a in use.fan_in[:-1])
    radius = radii["conv"] if radii["conv"] is not None else radii[role] * taps
  else:
    role = "input" if use.input else "hidden"
    norm = norms_lib.Spectral(input_layer=use.input)
  spec = MatrixSpec(use.fan_in, use.fan_out)
  if use.kind != "conv":
    spec = _spec_or_none(use.fan_in, use.fan_out, len(shape))
  evidence = use.evidence(role)
  if radius is None:
    radius = radii[role]
  elif radii["conv"] is None:
    evidence += f"; radius {radii[role]:g} x {taps} taps"
  return rules_lib.Group(norm, radius, spec=spec, role=role, evidence=evidence)


def _decide(uses: list[trace.Use], shape, head, radii) -> rules_lib.Group:
  """One leaf's group from all its uses; raises :class:`trace.Unresolved`."""
  ndim = len(shape)
  unknown = [u for u in uses if u.kind == "unknown"]
  if unknown:
    raise trace.Unresolved("used by an op the tracer does not know: "
                           + ", ".join(sorted({u.detail for u in unknown})))
  uses = [u for u in uses if u.kind != "reduce"]
  matrix = [u for u in uses if u.kind in ("embed", "dot", "conv")]
  elementwise = [u for u in uses if u.kind == "elementwise"]
  if not uses:
    if ndim >= 2:
      raise trace.Unresolved("a matrix leaf that the traced function never uses")
    return rules_lib.Group(norms_lib.BiasRMS(), radii["vector"], role="vector",
                           evidence="never used")
  if matrix and elementwise:
    ops = sorted({u.detail for u in matrix + elementwise})
    raise trace.Unresolved("used both as a matrix and elementwise: " + ", ".join(ops))
  if elementwise:
    gone = set().union(*(u.batch for u in elementwise))
    spec = None
    if gone:
      spec = MatrixSpec((), tuple(a for a in range(ndim) if a not in gone))
    gain = any(u.gain for u in elementwise)
    role = "gain" if gain else "vector"
    ops = ", ".join(sorted({u.detail for u in elementwise}))
    batch = f"; batch {tuple(sorted(gone))}" if gone else ""
    return rules_lib.Group(norms_lib.BiasRMS(), radii[role], spec=spec, role=role,
                           evidence=f"elementwise only ({ops}){batch}; {role}")
  groups = [_matrix_group(u, shape, head, radii) for u in matrix]
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

