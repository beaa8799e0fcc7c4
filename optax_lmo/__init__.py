"""optax_lmo: LMO-based optimizers (Scion, unconstrained Scion, Muon, ...) for JAX and Optax.

The top level holds the optimizers, the transforms they are chained from, routing
(which leaf gets which norm) and ``norms``; research extras live in
``optax_lmo.contrib``.
"""

from optax_lmo import contrib, norms
from optax_lmo._src import renamed as _renamed
from optax_lmo._src.alias import muon, normalized_sgd, scion, sign_descent, unconstrained_scion
from optax_lmo._src.describe import describe
from optax_lmo._src.infer import infer_rules
from optax_lmo._src.initialize import init_params
from optax_lmo._src.momentum import momentum
from optax_lmo._src.polar import Polar
from optax_lmo._src.rules import Group, Rules, default_rules, muon_rules
from optax_lmo._src.spec import MatrixSpec
from optax_lmo._src.transfer import norm_transfer_schedule
from optax_lmo._src.transforms import (
    add_constrained_decay,
    orthogonalize,
    scale_by_norm,
    scale_by_radius,
    sign,
)

__version__ = "0.3.0"

__all__ = [
    # optimizers
    "scion",
    "unconstrained_scion",
    "muon",
    "sign_descent",
    "normalized_sgd",
    # transforms
    "momentum",
    "scale_by_norm",
    "orthogonalize",
    "sign",
    "scale_by_radius",
    "add_constrained_decay",
    "norm_transfer_schedule",
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

# Old spellings: they still work, with a DeprecationWarning naming the new one (CHANGELOG.md).
_OLD = {
    # moved to contrib in 0.2.0, until 0.3.0 ...
    **{name: (f"optax_lmo.contrib:{name}", f"use optax_lmo.contrib.{name}")
       for name in ("polargrad", "drop_leaves", "adaptive_batch", "optimal_lr", "transfer_lr",
                    "transfer_batch", "fit_transfer_exponents", "TransferFit", "norm_report")},
    # ... or further, in 0.3.0 (until 0.4.0)
    **{name: (where, instead) for name, (where, instead) in contrib.REMOVED.items()},
    "route": ("optax_lmo._src.route:route", "it is internal in 0.3.0; chain ol.scale_by_norm,"
              " ol.scale_by_radius and the other transforms yourself, or pass rules= to an"
              " optimizer"),
    "RouteState": ("optax_lmo._src.route:RouteState", "it is internal in 0.3.0; ol.describe"
                   " reads it for you"),
    "MomentumState": ("optax_lmo._src.momentum:MomentumState", "it is the type of"
                      " ol.momentum's state"),
}
_old_getattr = _renamed.module_getattr("optax_lmo", _OLD)


def __getattr__(name: str):
  if name == "gpt_rules":
    raise AttributeError("optax_lmo.gpt_rules moved to the GPT trainer (benchmarks/gpt/model.py,"
                         " gpt_rules) in 0.2.0; for your own model use"
                         " ol.infer_rules(model, *example_inputs).")
  if name in ("Plan", "Description"):
    raise AttributeError(f"optax_lmo.{name} is no longer public (0.2.0): it is what"
                         f" {'Rules.plan' if name == 'Plan' else 'ol.describe'} returns.")
  return _old_getattr(name)
