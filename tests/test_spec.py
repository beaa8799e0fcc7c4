"""MatrixSpec: leaf <-> (batch, d_in, d_out) views, checked against NumPy transposes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_lmo as ol
from optax_lmo import norms
from optax_lmo._src import spec as spec_lib


def _arange(shape):
  return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


# (shape, spec, NumPy view as (batch, d_in, d_out), batch shape). The NumPy view
# is written by hand, independently of the library.
CASES = {
    "dense_2d": ((3, 5), ol.MatrixSpec(), lambda x: x[None], ()),
    "stacked_3d": (
        (4, 3, 5),
        ol.MatrixSpec(fan_in=(1,), fan_out=(2,)),
        lambda x: x,
        (4,),
    ),
    "stacked_negative_axes": (
        (4, 3, 5),
        ol.MatrixSpec(fan_in=(-2,), fan_out=(-1,)),
        lambda x: x,
        (4,),
    ),
    "batch_axis_last": (
        (3, 5, 4),
        ol.MatrixSpec(fan_in=(0,), fan_out=(1,)),
        lambda x: np.moveaxis(x, -1, 0),
        (4,),
    ),
    "batch_axis_middle": (
        (3, 4, 5),
        ol.MatrixSpec(fan_in=(0,), fan_out=(-1,)),
        lambda x: np.moveaxis(x, 1, 0),
        (4,),
    ),
    "conv_4d": (
        (3, 2, 4, 6),
        ol.MatrixSpec(fan_in=(0, 1, 2), fan_out=(3,)),
        lambda x: x.reshape(1, 3 * 2 * 4, 6),
        (),
    ),
    "multi_fan_in_with_batch": (
        (2, 3, 4, 5),
        ol.MatrixSpec(fan_in=(0, 2), fan_out=(3,)),
        lambda x: np.transpose(x, (1, 0, 2, 3)).reshape(3, 2 * 4, 5),
        (3,),
    ),
    "multi_fan_out_heads": (
        (6, 2, 4),
        ol.MatrixSpec(fan_in=(0,), fan_out=(1, 2)),
        lambda x: x.reshape(1, 6, 8),
        (),
    ),
    "transposed_torch_layout": (
        (5, 3),
        ol.MatrixSpec(fan_in=(1,), fan_out=(0,)),
        lambda x: x.T[None],
        (),
    ),
    "two_batch_axes": (
        (2, 3, 4, 5),
        ol.MatrixSpec(fan_in=(2,), fan_out=(3,)),
        lambda x: x.reshape(6, 4, 5),
        (2, 3),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_to_matrices_matches_numpy_view(name):
  shape, spec, np_view, _ = CASES[name]
  x = _arange(shape)
  m = spec_lib.to_matrices(jnp.asarray(x), spec)
  np.testing.assert_array_equal(np.asarray(m), np_view(x))


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
  shape, spec, _, _ = CASES[name]
  x = jnp.asarray(_arange(shape))
  m = spec_lib.to_matrices(x, spec)
  back = spec_lib.from_matrices(m, shape, spec)
  assert back.shape == x.shape
  np.testing.assert_array_equal(np.asarray(back), np.asarray(x))


@pytest.mark.parametrize("name", sorted(CASES))
def test_dims_and_batch_shape(name):
  shape, spec, np_view, batch = CASES[name]
  b, i, o = np_view(_arange(shape)).shape
  assert spec.dims(shape) == (b, i, o)
  assert spec_lib.batch_shape(shape, spec) == batch


def test_round_trip_under_jit():
  spec = ol.MatrixSpec(fan_in=(0, 2), fan_out=(3,))
  shape = (2, 3, 4, 5)
  x = jnp.asarray(_arange(shape))

  @jax.jit
  def f(x):
    return spec_lib.from_matrices(2.0 * spec_lib.to_matrices(x, spec), shape, spec)

  np.testing.assert_array_equal(np.asarray(f(x)), 2.0 * np.asarray(x))


def test_default_and_coercion():
  assert ol.MatrixSpec() == ol.MatrixSpec(fan_in=(0,), fan_out=(1,))
  # Ints and lists are accepted and stored as tuples; specs are hashable.
  s = ol.MatrixSpec(fan_in=1, fan_out=[2])
  assert s == ol.MatrixSpec(fan_in=(1,), fan_out=(2,))
  assert hash(s) == hash(ol.MatrixSpec(fan_in=(1,), fan_out=(2,)))
  assert s.resolve(3) == s
  assert ol.MatrixSpec(fan_in=(-2,), fan_out=(-1,)).resolve(3) == s


def test_default_spec_for_2d():
  assert spec_lib.resolve_spec((3, 5), None) == ol.MatrixSpec(fan_in=(0,), fan_out=(1,))


@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 3, 4, 8)])
def test_ndim3_without_spec_raises_with_path(shape):
  path = "blocks/0/attn/qkv/kernel"
  with pytest.raises(ValueError, match="blocks/0/attn/qkv/kernel") as e:
    spec_lib.resolve_spec(shape, None, path)
  assert "MatrixSpec" in str(e.value)
  # Through a norm as well.
  with pytest.raises(ValueError, match="blocks/0/attn/qkv/kernel"):
    norms.Spectral().lmo(jnp.ones(shape), path=path)
  with pytest.raises(ValueError, match="blocks/0/attn/qkv/kernel"):
    norms.ColNorm().norm(jnp.ones(shape), path=path)


def test_ndim1_without_spec_raises():
  with pytest.raises(ValueError, match="emb/scale"):
    spec_lib.resolve_spec((5,), None, "emb/scale")


@pytest.mark.parametrize(
    "spec",
    [
        ol.MatrixSpec(fan_in=(0,), fan_out=(3,)),
        ol.MatrixSpec(fan_in=(-4,), fan_out=(1,)),
        ol.MatrixSpec(fan_in=(5,), fan_out=(1,)),
    ],
)
def test_out_of_range_axis_raises(spec):
  with pytest.raises(ValueError, match="out of range") as e:
    spec.resolve(3, "layers/kernel")
  assert "layers/kernel" in str(e.value)
  with pytest.raises(ValueError, match="out of range"):
    spec_lib.to_matrices(jnp.ones((2, 3, 4)), spec)


@pytest.mark.parametrize(
    "spec",
    [
        ol.MatrixSpec(fan_in=(0,), fan_out=(0,)),
        ol.MatrixSpec(fan_in=(1,), fan_out=(-2,)),  # -2 is axis 1 for ndim 3
        ol.MatrixSpec(fan_in=(0, 0), fan_out=(2,)),
    ],
)
def test_duplicate_axis_raises(spec):
  with pytest.raises(ValueError, match="twice") as e:
    spec.resolve(3, "layers/kernel")
  assert "layers/kernel" in str(e.value)
  with pytest.raises(ValueError, match="twice"):
    spec_lib.to_matrices(jnp.ones((2, 3, 4)), spec)


def test_path_str():
  tree = {"blocks": [{"attn": {"kernel": 1}}], "head": 2}
  paths = [spec_lib.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths == ["blocks/0/attn/kernel", "head"]
  # A trailing ``.value`` (how Flax NNX variables flatten) is dropped.
  path = (jax.tree_util.DictKey("dense"), jax.tree_util.GetAttrKey("value"))
  assert spec_lib.path_str(path) == "dense"
