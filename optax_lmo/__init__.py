"""optax_lmo: LMO-based optimizers (Scion, unconstrained Scion, Muon, ...) for JAX and Optax."""

from optax_lmo import norms
from optax_lmo._src.adaptive_batch import AdaptiveBatchState, adaptive_batch
from optax_lmo._src.alias import (
    muon,
    normalized_sgd,
    polargrad,
    scion,
    sign_descent,
    unconstrained_scion,
)
from optax_lmo._src.coeffs import REGISTRY as COEFFICIENTS
from optax_lmo._src.coeffs import Coefficients, get_coefficients
from optax_lmo._src.describe import Description, describe
from optax_lmo._src.diagnostics import norm_report
from optax_lmo._src.drop import DropState, drop_leaves
from optax_lmo._src.infer import infer_rules
from optax_lmo._src.initialize import init_params
from optax_lmo._src.momentum import MomentumState, momentum, state_dtype
from optax_lmo._src.polar import Polar, polar
from optax_lmo._src.route import RouteState, route
from optax_lmo._src.rules import Group, Plan, Rules, default_rules, gpt_rules, muon_rules
from optax_lmo._src.schedules import (
    TransferFit,
    fit_transfer_exponents,
    group_lr_multipliers,
    norm_transfer_schedule,
    optimal_lr,
    transfer_batch,
    transfer_lr,
)
from optax_lmo._src.spec import MatrixSpec, from_matrices, to_matrices
from optax_lmo._src.transforms import (
    add_constrained_decay,
    orthogonalize,
    scale_by_norm,
    scale_by_radius,
    sign,
    with_float32_state,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveBatchState",
    "adaptive_batch",
    "COEFFICIENTS",
    "Coefficients",
    "Description",
    "DropState",
    "drop_leaves",
    "polargrad",
    "Group",
    "Plan",
    "RouteState",
    "Rules",
    "MatrixSpec",
    "MomentumState",
    "TransferFit",
    "Polar",
    "add_constrained_decay",
    "default_rules",
    "describe",
    "fit_transfer_exponents",
    "from_matrices",
    "get_coefficients",
    "gpt_rules",
    "group_lr_multipliers",
    "infer_rules",
    "init_params",
    "momentum",
    "muon",
    "muon_rules",
    "norm_report",
    "norm_transfer_schedule",
    "normalized_sgd",
    "norms",
    "optimal_lr",
    "orthogonalize",
    "polar",
    "route",
    "scale_by_norm",
    "scale_by_radius",
    "scion",
    "sign",
    "sign_descent",
    "state_dtype",
    "to_matrices",
    "transfer_batch",
    "transfer_lr",
    "unconstrained_scion",
    "with_float32_state",
]
