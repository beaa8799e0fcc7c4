"""Research extras: layer dropping, adaptive batch size, PolarGrad, QK-clip, norm transfer,
NorMuon's row normalization and the hyperball.

Everything here is as tested as the top level; it is kept apart so that the top level stays
the few names an optax user needs (the optimizers, the transforms, routing, ``norms``).
"""

from optax_lmo._src import renamed as _renamed
from optax_lmo._src.adaptive_batch import adaptive_batch
from optax_lmo._src.alias import polargrad
from optax_lmo._src.contrib_alias import hyperball, normuon
from optax_lmo._src.diagnostics import norm_report
from optax_lmo._src.drop import drop_leaves
from optax_lmo._src.normuon import scale_by_row_rms
from optax_lmo._src.qk_clip import qk_clip
from optax_lmo._src.transfer import (
    TransferFit,
    fit_transfer_exponents,
    optimal_lr,
    transfer_batch,
    transfer_lr,
)

__all__ = [
    "TransferFit",
    "adaptive_batch",
    "drop_leaves",
    "fit_transfer_exponents",
    "hyperball",
    "norm_report",
    "normuon",
    "optimal_lr",
    "polargrad",
    "qk_clip",
    "scale_by_row_rms",
    "transfer_batch",
    "transfer_lr",
]

_S = "optax_lmo._src"
# Names that left contrib in 0.3.0 (CHANGELOG.md): they still work, with a warning, until 0.4.0.
REMOVED = {
    "polar": (f"{_S}.polar:polar", "use ol.Polar(...).apply(x), the same function"),
    "COEFFICIENTS": (f"{_S}.coeffs:REGISTRY", "pass a preset's name or your (a, b, c) triples"
                     " to ol.Polar(coeffs=...); docs/polar.md lists the presets"),
    "Coefficients": (f"{_S}.coeffs:Coefficients", "pass a preset's name or your (a, b, c)"
                     " triples to ol.Polar(coeffs=...)"),
    "get_coefficients": (f"{_S}.coeffs:get_coefficients", "pass a preset's name or your"
                         " (a, b, c) triples to ol.Polar(coeffs=...)"),
    "state_dtype": (f"{_S}.momentum:state_dtype", "ol.describe(tx, params) shows each leaf's"
                    " state dtype"),
    "with_float32_state": (f"{_S}.transforms:with_float32_state", "it is internal now; pass"
                           " mu_dtype=jnp.float32 to the optimizers"),
    "to_matrices": (f"{_S}.spec:to_matrices", "use norm.to_stack(x, spec).matrices"),
    "from_matrices": (f"{_S}.spec:from_matrices", "use norm.to_stack(x, spec).unstack(m)"),
    "group_lr_multipliers": (f"{_S}.transfer:group_lr_multipliers", "give each Group its"
                             " lr_mult (input : hidden : output = 1 : 1/8 : 1 in [NT])"),
    "DropState": (f"{_S}.drop:DropState", "it is the type of drop_leaves' state"),
    "AdaptiveBatchState": (f"{_S}.adaptive_batch:AdaptiveBatchState", "it is the type of"
                           " adaptive_batch's state"),
}
__getattr__ = _renamed.module_getattr("optax_lmo.contrib", REMOVED)
