"""Norms with their LMOs, dual norms and initializers (each a :class:`Norm`)."""

from optax_lmo._src import renamed as _renamed
from optax_lmo._src.conv import SpectralConv
from optax_lmo._src.norms import (
    BiasRMS,
    ColNorm,
    Frobenius,
    Norm,
    RowNorm,
    Sign,
    Spectral,
)

__all__ = [
    "Norm",
    "Spectral",
    "SpectralConv",
    "ColNorm",
    "RowNorm",
    "Sign",
    "BiasRMS",
    "Frobenius",
]

_D = "optax_lmo._src.diagnostics"
OLD = {  # names that left in 0.3.0: they still work, with a warning, until 0.4.0
    "rms_to_inf": (f"{_D}:rms_to_inf", "use ol.norms.RowNorm().norm(w), the same number"),
    "one_to_rms": (f"{_D}:one_to_rms", "use ol.norms.ColNorm().norm(w), the same number"),
    "rms_to_rms": (f"{_D}:rms_to_rms", "use ol.norms.Spectral().norm(w), the same number"),
    "sup_norm": (f"{_D}:sup_norm", "use ol.norms.Sign(scaled=False).norm(w), the same number"),
}
__getattr__ = _renamed.module_getattr("optax_lmo.norms", OLD)
