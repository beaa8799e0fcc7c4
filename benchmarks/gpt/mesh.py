"""Device meshes for the GPT example: the ``--mesh`` flag, array layouts, multi-process runs.

  --mesh data=2,fsdp=4      8 devices: each batch split 8 ways, each matrix 4 ways

Axes are ``data``, ``fsdp`` and ``tp`` (always in that order, outermost first);
their sizes multiply to the number of devices. The layout of an array depends
on its shape alone, so every optimizer-state leaf (momentum, AdamW moments) is
laid out like the parameter it belongs to:

* ``fsdp`` splits the first dimension of a >= 2-D leaf if it divides it, else
  its last dimension; a matrix it divides in neither stays replicated;
* ``tp`` splits the last dimension of a >= 2-D leaf when ``fsdp`` left it free
  and ``tp`` divides it;
* vectors and scalars (RMSNorm gains, step counters) are replicated;
* a batch ``(B, L)`` is split along ``B`` over ``data`` and ``fsdp``;
* as in FSDP, the forward and backward passes see each weight whole over
  ``fsdp`` (:func:`gathered`); parameters, gradients in the update, and the
  optimizer state stay split.

The axes are ``AxisType.Auto``: XLA partitions the model, and the spectral LMO
of ``optax_lmo`` gives each matrix one owner device (``distribute=None`` finds
the mesh set by :func:`use`). The mesh changes where numbers are computed, not
what is computed: losses agree with a single device to float tolerance
(reductions run in another order), so a checkpoint resumes on any mesh.

Multi-process (one command per process, e.g. 2 processes x 4 CPU devices)::

  python -m benchmarks.gpt.train --mesh data=2,fsdp=4 \\
      --coordinator 127.0.0.1:8476 --num-processes 2 --process-id 0   # and --process-id 1

:func:`init_distributed` runs ``jax.distributed.initialize`` (gloo collectives
on CPU) before any array exists; every process then holds the shards of its
own devices, and process 0 alone writes the log, plot and progress bar.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over these


def parse(spec: str | None) -> dict[str, int]:
  """``{"data": 2, "fsdp": 4}`` from ``"data=2,fsdp=4"``, in :data:`AXES` order; ``{}`` for None."""
  if spec is None or not spec.strip():
    return {}
  sizes: dict[str, int] = {}
  for part in spec.split(","):
    name, _, size = part.strip().partition("=")
    if name not in AXES or not size.strip().isdigit() or int(size) < 1:
      raise ValueError(f"--mesh {spec!r}: {part.strip()!r} is not AXIS=SIZE with AXIS one of"
                       f" {AXES} and SIZE >= 1 (e.g. data=2,fsdp=4).")
    if name in sizes:
      raise ValueError(f"--mesh {spec!r}: axis {name!r} is given twice.")
    sizes[name] = int(size)
  return {a: sizes[a] for a in AXES if a in sizes}


def init_distributed(coordinator: str | None, num_processes: int, process_id: int,
                     mesh: str | None) -> None:
  """Joins a multi-process run (no-op for one process); call before any JAX array exists.

  Each process gets ``prod(mesh sizes) / num_processes`` CPU devices and gloo
  collectives (these settings only affect the CPU backend).
  """
  if num_processes <= 1 or jax.distributed.is_initialized():
    return
  sizes = parse(mesh)
  size = math.prod(sizes.values())
  if coordinator is None or not sizes or size % num_processes:
    raise ValueError(
        f"a run of {num_processes} processes needs --coordinator HOST:PORT and a --mesh whose"
        f" size ({size if sizes else 'none given'}) is a multiple of {num_processes}."
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_num_cpu_devices", size // num_processes)
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(spec: str | None, devices=None) -> Mesh | None:
  """The mesh ``spec`` names over ``devices`` (default: all of them); ``None`` without a spec."""
  sizes = parse(spec)
  if not sizes:
    return None
  devices = jax.devices() if devices is None else list(devices)
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"--mesh {spec!r} has {math.prod(sizes.values())} devices, but there are"
                     f" {len(devices)}; make the sizes multiply to {len(devices)}.")
  return jax.make_mesh(tuple(sizes.values()), tuple(sizes), devices=devices,
                       axis_types=(AxisType.Auto,) * len(sizes))


def use(mesh: Mesh | None):
  """``jax.set_mesh(mesh)`` as a context (nothing for ``None``): lets the LMO find the mesh."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def leaf_spec(mesh: Mesh, shape) -> P:
  """The ``PartitionSpec`` of an array of ``shape`` (rules in the module docstring)."""
  spec: list = [None] * len(shape)
  if len(shape) < 2:
    return P(*spec)
  fsdp, tp = mesh.shape.get("fsdp", 1), mesh.shape.get("tp", 1)
  if fsdp > 1:
    dim = next((d for d in (0, len(shape) - 1) if shape[d] % fsdp == 0), None)
    if dim is not None:
      spec[dim] = "fsdp"
  if tp > 1 and spec[-1] is None and shape[-1] % tp == 0:
    spec[-1] = "tp"
  return P(*spec)


def shardings(mesh: Mesh, tree):
  """A ``NamedSharding`` for every array leaf of ``tree`` (arrays or shape structs)."""
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(mesh, np.shape(x))), tree)


def batch_sharding(mesh: Mesh, batch: int) -> NamedSharding:
  """``(B, L)`` split along ``B`` over the batch axes; replicated when they do not divide ``B``."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  if batch % math.prod(mesh.shape[a] for a in axes):
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, P(axes))


def put_batch(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
  """A host batch (the same in every process) as a global array: each device takes its rows."""
  if mesh is None:
    return jnp.asarray(x)
  return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.shape[0]), lambda i: x[i])


def create(fn, mesh: Mesh | None):
  """``fn() -> (model, optimizer)`` run as one ``jax.jit`` that lays every array out on ``mesh``."""
  if mesh is None:
    return nnx.jit(fn)()
  graphdef = []

  def init():
    g, state = nnx.split(fn())
    graphdef[:] = [g]  # static: the same on every trace
    return state

  with use(mesh):
    abstract = jax.eval_shape(init)
    state = jax.jit(init, out_shardings=shardings(mesh, abstract))()
  return nnx.merge(graphdef[0], state)


def jit_step(step, model, optimizer, mesh: Mesh | None, batch: int, extra: int = 0):
  """``step(model, optimizer, x_BxL, y_BxL, *scalars) -> loss`` as a ``jax.jit``, shardings pinned.

  The model and optimizer state go in and come out with the layout they have
  (from :func:`create`), the batch with :func:`batch_sharding`, the ``extra``
  scalars replicated. The returned function updates ``model`` and
  ``optimizer`` in place, like ``nnx.jit``. Without a mesh, ``step`` itself.
  """
  if mesh is None:
    return step
  graphdef, state = nnx.split((model, optimizer))
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  batch_sh, whole = batch_sharding(mesh, batch), NamedSharding(mesh, P())

  @functools.partial(jax.jit, in_shardings=(state_sh, batch_sh, batch_sh) + (whole,) * extra,
                     out_shardings=(state_sh, whole))
  def pure(state, x_BxL, y_BxL, *scalars):
    m, o = nnx.merge(graphdef, state)
    loss = step(m, o, x_BxL, y_BxL, *scalars)
    return nnx.state((m, o)), loss

  def run(model, optimizer, x_BxL, y_BxL, *scalars):
    with use(mesh):
      state, loss = pure(nnx.state((model, optimizer)), x_BxL, y_BxL, *scalars)
    nnx.update((model, optimizer), state)
    return loss

  return run


def gathered(model: nnx.Module) -> nnx.Module:
  """FSDP's all-gather: under ``jit`` and a mesh, a copy of ``model`` with weights whole over fsdp.

  The example's jitted functions run the model through it. Without it XLA
  shards activations along features to match the weights and reshuffles them
  in attention; with it each device runs the model on its rows of the batch,
  and the gradients (taken with respect to the copy) meet the sharded optimizer
  state in the update. A copy, so that ``nnx.jit`` does not write the gathered
  weights back; without a mesh in context (:func:`use`), ``model`` itself.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get("fsdp", 1) == 1:
    return model
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  whole = jax.tree.map(
      lambda x: P(*(None if a == "fsdp" else a for a in leaf_spec(mesh, x.shape))), params)
  return nnx.merge(graphdef, jax.lax.with_sharding_constraint(params, whole), rest)


def to_host(x) -> np.ndarray:
  """The whole value of ``x`` as numpy, gathered from the other processes if need be."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def is_lead() -> bool:
  """Whether this is process 0, the one that writes logs, plots and the progress bar."""
  return jax.process_index() == 0
