"""Norms with their LMOs, dual norms and initializers, and operator-norm diagnostics."""

from optax_lmo._src.conv import SpectralConv
from optax_lmo._src.diagnostics import one_to_rms, rms_to_inf, rms_to_rms, sup_norm
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
    "rms_to_inf",
    "one_to_rms",
    "rms_to_rms",
    "sup_norm",
]
