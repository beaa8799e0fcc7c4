"""Character-level text data: a corpus shipped with Python, a tokenizer, resumable batches.

The default corpus is the text of ``pydoc_data.topics`` (the help topics of the
Python docs, ~465k characters), so the example needs no network. Any UTF-8 text
file works instead (``--data PATH``). The batch at step ``k`` is a pure function
of ``(seed, k)``: resuming needs only the step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator

import numpy as np

PYTHON_SOURCE = "python-stdlib"  # ``--data`` for Python's own source code


def python_source_text() -> str:
  """The ASCII-only ``.py`` files at the top of Python's standard library, sorted by name.

  Ships with every Python (about 4.4M characters on 3.11): a second corpus, code
  instead of prose, with no download. Its content follows the Python version;
  a result records the text's fingerprint.
  """
  import glob
  import sysconfig

  texts = []
  for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
    if text.isascii():
      texts.append(text)
  return "\n".join(texts)


def load_text(path: str | None = None) -> tuple[str, str]:
  """``(text, source)``: the file at ``path``, the ``pydoc_data.topics`` corpus (``None``) or
  Python's source code (:data:`PYTHON_SOURCE`)."""
  if path is None:
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics.values()), "pydoc_data.topics"
  if path == PYTHON_SOURCE:
    return python_source_text(), PYTHON_SOURCE
  with open(path, encoding="utf-8") as f:
    return f.read(), path


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A tokenized corpus split into train and validation token ids."""

  vocab: str  # the characters; token id i is vocab[i]
  train_N: np.ndarray  # int32 token ids of the train split (the first 1 - val_frac)
  val_N: np.ndarray  # int32 token ids of the validation split (the last val_frac)
  source: str  # where the text came from
  fingerprint: str  # sha256 of the text (first 16 hex digits): ties checkpoints to data

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def encode(self, s: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(self.vocab)}
    return np.array([index[c] for c in s], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.vocab[int(i)] for i in ids)


def build(text: str, source: str = "text", *, val_frac: float = 0.1) -> Dataset:
  """Character tokenizer from ``text``'s own alphabet; the last ``val_frac`` is validation."""
  if not 0.0 < val_frac < 1.0:
    raise ValueError(f"val_frac must be in (0, 1), got {val_frac}.")
  vocab = "".join(sorted(set(text)))
  lookup = np.zeros(max(map(ord, vocab)) + 1, np.int32)
  lookup[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)
  ids_N = lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
  n_val = int(round(len(ids_N) * val_frac))
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
  return Dataset(vocab, ids_N[:-n_val], ids_N[-n_val:], source, digest)


MIN_CHARS = 1000  # less is too little text to train on


def min_chars(*, seq: int, val_frac: float) -> int:
  """The fewest characters whose splits fit :func:`train_batch` and :func:`val_batches`.

  The train split must hold a window of ``seq + 2`` tokens, the validation split
  (the last ``val_frac``, rounded as :func:`build` rounds it) one of ``seq + 1``;
  and never fewer than ``MIN_CHARS``.
  """

  def fits(n: int) -> bool:
    n_val = int(round(n * val_frac))
    return n_val >= seq + 1 and n - n_val >= seq + 2

  lo, hi = 1, int((seq + 2) / min(val_frac, 1 - val_frac)) + 2  # fits(hi): both splits >= seq + 2
  while lo < hi:  # both splits only grow with n: bisect for the first n that fits
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
  return max(lo, MIN_CHARS)


def check_length(n_chars: int, source: str, *, seq: int, val_frac: float) -> None:
  """Raises ``ValueError`` saying how many characters ``seq`` and ``val_frac`` need, and the fix."""
  need = min_chars(seq=seq, val_frac=val_frac)
  if n_chars >= need:
    return
  if need == MIN_CHARS:
    why, fix = f"at least {MIN_CHARS} to train on", f"use a text of at least {MIN_CHARS} characters"
  elif int(round((need - 1) * val_frac)) < seq + 1:  # the validation split is what binds
    why = (f"--seq {seq} needs {need}, so that the validation split (the last --val-frac"
           f" {val_frac}) holds --seq + 1")
    fix = "use a longer text, a smaller --seq or a larger --val-frac"
  else:
    why = (f"--seq {seq} needs {need}, so that the train split (all but --val-frac {val_frac})"
           f" holds --seq + 2")
    fix = "use a longer text, a smaller --seq or a smaller --val-frac"
  raise ValueError(f"{source}: {n_chars} characters, too few: {why}; {fix}.")


def load(path: str | None = None, *, val_frac: float = 0.1) -> Dataset:
  """:func:`load_text` then :func:`build`."""
  text, source = load_text(path)
  if len(text) < MIN_CHARS:
    raise ValueError(f"{source}: {len(text)} characters is too little text to train on.")
  return build(text, source, val_frac=val_frac)


def train_batch(data: Dataset, *, seed: int, step: int, batch: int, seq: int):
  """``(inputs_BxL, targets_BxL)`` for ``step``: random windows of the train split.

  A pure function of ``(seed, step)``, so a resumed run sees the same batches.
  """
  n = len(data.train_N) - seq - 1
  if n <= 0:
    raise ValueError(f"train split ({len(data.train_N)} tokens) is shorter than seq={seq} + 1.")
  rng = np.random.default_rng([seed, step])
  starts_B = rng.integers(0, n + 1, size=batch)
  window_BxL1 = data.train_N[starts_B[:, None] + np.arange(seq + 1)]
  return window_BxL1[:, :-1], window_BxL1[:, 1:]


def val_batches(data: Dataset, *, batch: int, seq: int, max_batches: int) -> Iterator:
  """Consecutive non-overlapping windows of the validation split, in full batches.

  The same windows every time (independent of the seed), at most ``max_batches``
  batches; the batch shrinks when the split holds fewer than ``batch`` windows.
  """
  windows = (len(data.val_N) - 1) // seq
  if windows < 1:
    raise ValueError(f"validation split ({len(data.val_N)} tokens) is shorter than seq={seq} + 1.")
  b = min(batch, windows)
  for k in range(min(max_batches, windows // b)):
    starts_B = (k * b + np.arange(b)) * seq
    window_BxL1 = data.val_N[starts_B[:, None] + np.arange(seq + 1)]
    yield window_BxL1[:, :-1], window_BxL1[:, 1:]


def unigram_entropy(ids_N: np.ndarray, vocab_size: int) -> float:
  """Entropy (nats) of the token distribution of ``ids_N``: the loss of the best unigram model."""
  p = np.bincount(ids_N, minlength=vocab_size) / len(ids_N)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


__all__ = [
    "MIN_CHARS", "PYTHON_SOURCE", "Dataset", "build", "check_length", "load", "load_text",
    "min_chars", "python_source_text", "train_batch", "val_batches", "unigram_entropy",
]
