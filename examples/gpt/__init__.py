"""A character-level Flax NNX GPT trained with Scion, Muon or AdamW (``-m examples.gpt.train``)."""
