"""The library's tests sit here; the benchmarks', examples' and docs' in ``tests/harness``.

``make test`` runs both; ``make test-lib`` the library's alone. The shared helpers
(``_simulated``, ``_wild_*``) are importable from either folder.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The suite compiles thousands of small programs and runs each a few times: XLA:CPU's
# backend optimizations (LLVM -O2) cost more than they save here. Set before jax starts its
# backend (and inherited by the subprocesses the tests start); the numbers differ from an
# optimized build only by rounding, which every tolerance in the suite allows.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

# One compilation cache per test run, shared by its xdist workers (they inherit the variable
# from the controller, which sets it first): a test that jits the same computation as an
# earlier one (a fresh optimizer of the same kind on the same tree) loads it instead of
# compiling it again. Each run starts empty, as on a fresh machine, and removes it at the end.
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

if "OPTAX_LMO_TEST_JIT_CACHE" not in os.environ:
  os.environ["OPTAX_LMO_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="optax_lmo_jit_")
_CACHE = os.environ["OPTAX_LMO_TEST_JIT_CACHE"]
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  if not hasattr(session.config, "workerinput"):  # the controller, once the workers are done
    shutil.rmtree(_CACHE, ignore_errors=True)
