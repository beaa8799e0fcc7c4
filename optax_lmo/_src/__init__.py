"""Private implementation; the public API is re-exported from ``optax_lmo``."""
