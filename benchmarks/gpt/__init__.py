"""The GPT trainer the benchmarks run: Scion, Muon or AdamW (``-m benchmarks.gpt.train``)."""
