"""Norms with their LMOs, dual norms and initializers (see ``optax_lmo._src.norms``)."""

from optax_lmo._src.norms import (
    BiasRMS,
    ColNorm,
    Frobenius,
    Norm,
    RowNorm,
    Sign,
    Spectral,
    SpectralConv,
)

__all__ = ["Norm", "Spectral", "SpectralConv", "ColNorm", "RowNorm", "Sign", "BiasRMS", "Frobenius"]
