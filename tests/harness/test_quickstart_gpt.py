"""examples/quickstart_gpt.py: the short script trains, plots, and refuses what it cannot use."""

import math
import subprocess
import sys

import numpy as np
import pytest

from examples import quickstart_gpt as qs

TINY = dict(steps=40, batch=8, seq=32, width=32, depth=2, heads=2, eval_every=20)


def test_it_learns_the_characters_and_writes_its_plot(tmp_path):
  text = "the quick brown fox jumps over the lazy dog. " * 400
  path = tmp_path / "text.txt"
  path.write_text(text)
  plot = tmp_path / "loss.png"
  val = qs.main(qs.Config(data=str(path), plot=str(plot), lr=2**-5, **TINY))
  counts = np.unique(list(text), return_counts=True)[1]
  unigram = -float(np.sum(counts / counts.sum() * np.log(counts / counts.sum())))
  assert math.isfinite(val) and val < unigram, (val, unigram)
  assert plot.stat().st_size > 0


def test_too_little_text_is_one_clear_error(tmp_path):
  path = tmp_path / "short.txt"
  path.write_text("abcdef")
  with pytest.raises(SystemExit, match="6 characters is too little text for --seq 32"):
    qs.main(qs.Config(data=str(path), plot="", **TINY))


@pytest.mark.parametrize("flags,message", [(["--lr", "nan"], "--lr must be a finite number"),
                                           (["--heads", "3"], "--heads 3 must divide"),
                                           (["--steps", "0"], "--steps must be >= 1")])
def test_bad_flags_exit_2_with_one_error_line(flags, message):
  out = subprocess.run([sys.executable, "-m", "examples.quickstart_gpt", *flags],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
