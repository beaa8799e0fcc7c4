"""optax_lmo: LMO-based optimizers (Scion, unconstrained Scion, Muon, ...) for JAX and Optax.

The top level holds the optimizers, the transforms they are chained from, routing
(which leaf gets which norm) and ``norms``; research extras live in
``optax_lmo.contrib``.
"""

import warnings as _warnings

from optax_lmo import contrib, norms
from optax_lmo._src.alias import muon, normalized_sgd, scion, sign_descent, unconstrained_scion
from optax_lmo._src.describe import describe
from optax_lmo._src.infer import infer_rules
from optax_lmo._src.initialize import init_params
from optax_lmo._src.momentum import MomentumState, momentum
from optax_lmo._src.polar import Polar
from optax_lmo._src.route import RouteState, route
from optax_lmo._src.rules import Group, Rules, default_rules, muon_rules
from optax_lmo._src.schedules import norm_transfer_schedule
from optax_lmo._src.spec import MatrixSpec
from optax_lmo._src.transforms import (
    add_constrained_decay,
    orthogonalize,
    scale_by_norm,
    scale_by_radius,
    sign,
)

__version__ = "0.2.0"

__all__ = [
    # optimizers
    "scion",
    "unconstrained_scion",
    "muon",
    "sign_descent",
    "normalized_sgd",
    # transforms
    "momentum",
    "MomentumState",
    "scale_by_norm",
    "orthogonalize",
    "sign",
    "scale_by_radius",
    "add_constrained_decay",
    "norm_transfer_schedule",
    "route",
    "RouteState",
    # routing
    "Group",
    "Rules",
    "MatrixSpec",
    "infer_rules",
    "default_rules",
    "muon_rules",
    "init_params",
    "describe",
    # options and submodules
    "Polar",
    "norms",
    "contrib",
]

# Names that left the top level in 0.2.0 (CHANGELOG.md): they still work, with a warning,
# until 0.3.0. Names that were never at the top level (new in contrib) are not among them.
_NEW_IN_CONTRIB = frozenset({"qk_clip"})
_MOVED = {name: "optax_lmo.contrib" for name in contrib.__all__ if name not in _NEW_IN_CONTRIB}


def __getattr__(name: str):
  if name in _MOVED:
    _warnings.warn(f"optax_lmo.{name} is deprecated: use {_MOVED[name]}.{name} (moved in"
                   " 0.2.0; the old name goes in 0.3.0).", DeprecationWarning, stacklevel=2)
    return getattr(contrib, name)
  if name == "gpt_rules":
    raise AttributeError("optax_lmo.gpt_rules moved to the GPT trainer (benchmarks/gpt/model.py,"
                         " gpt_rules) in 0.2.0; for your own model use"
                         " ol.infer_rules(model, *example_inputs).")
  if name in ("Plan", "Description"):
    raise AttributeError(f"optax_lmo.{name} is no longer public (0.2.0): it is what"
                         f" {'Rules.plan' if name == 'Plan' else 'ol.describe'} returns.")
  raise AttributeError(f"module 'optax_lmo' has no attribute {name!r}")
