"""Examples for optax_lmo (run as modules, e.g. ``python -m examples.quickstart_gpt``)."""
