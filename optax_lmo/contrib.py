"""Research extras and lower-level pieces: layer dropping, adaptive batch size, PolarGrad,
norm-transfer fits, QK-clip, the Newton–Schulz coefficient registry, matrix views and
diagnostics.

Everything here is as tested as the top level; it is kept apart so that the top level stays
the few names an optax user needs (the optimizers, the transforms, routing, ``norms``).
"""

from optax_lmo._src.adaptive_batch import AdaptiveBatchState, adaptive_batch
from optax_lmo._src.alias import polargrad
from optax_lmo._src.coeffs import REGISTRY as COEFFICIENTS
from optax_lmo._src.coeffs import Coefficients, get_coefficients
from optax_lmo._src.diagnostics import norm_report
from optax_lmo._src.drop import DropState, drop_leaves
from optax_lmo._src.momentum import state_dtype
from optax_lmo._src.polar import polar
from optax_lmo._src.qk_clip import qk_clip
from optax_lmo._src.schedules import (
    TransferFit,
    fit_transfer_exponents,
    group_lr_multipliers,
    optimal_lr,
    transfer_batch,
    transfer_lr,
)
from optax_lmo._src.spec import from_matrices, to_matrices
from optax_lmo._src.transforms import with_float32_state

__all__ = [
    "AdaptiveBatchState",
    "COEFFICIENTS",
    "Coefficients",
    "DropState",
    "TransferFit",
    "adaptive_batch",
    "drop_leaves",
    "fit_transfer_exponents",
    "from_matrices",
    "get_coefficients",
    "group_lr_multipliers",
    "norm_report",
    "optimal_lr",
    "polar",
    "polargrad",
    "qk_clip",
    "state_dtype",
    "to_matrices",
    "transfer_batch",
    "transfer_lr",
    "with_float32_state",
]
