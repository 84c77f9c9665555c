"""Tests of cosine_similarity and l2_normalize."""

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import tcm_jax
from tcm_jax import similarity
from tests.losses import reference


def test_matches_numpy_for_queries_and_references():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(5, 7)), rng.normal(size=(3, 7))
  got = jax.jit(tcm_jax.cosine_similarity)(x.astype(np.float32),
                                           y.astype(np.float32))
  assert got.shape == (5, 3)
  np.testing.assert_allclose(got, reference.cosine(x, y), atol=1e-6)
  np.testing.assert_allclose(tcm_jax.cosine_similarity(x.astype(np.float32)),
                             reference.cosine(x), atol=1e-6)


def test_bfloat16_embeddings_give_float32_similarity():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(6, 32)), jnp.bfloat16)
  s = tcm_jax.cosine_similarity(x)
  assert s.dtype == jnp.float32
  # Computed from the bf16 values, but in float32: exact up to f32 rounding.
  np.testing.assert_allclose(s, reference.cosine(np.asarray(x, np.float64)),
                             atol=1e-6)
  grad = jax.grad(lambda x: tcm_jax.cosine_similarity(x)[0, 1])(x)
  assert grad.dtype == jnp.bfloat16


def test_integer_embeddings_are_accepted():
  s = tcm_jax.cosine_similarity(np.array([[3, 4], [4, 3]]))
  np.testing.assert_allclose(s, [[1.0, 0.96], [0.96, 1.0]], rtol=1e-6)


def test_zero_vectors_have_zero_similarity_and_finite_gradients():
  x = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)
  s = tcm_jax.cosine_similarity(x)
  np.testing.assert_array_equal(s[0], [0.0, 0.0])
  grad = jax.grad(lambda x: jnp.sum(tcm_jax.cosine_similarity(x)))(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(similarity.l2_normalize(x)[0], [0.0, 0.0])


def test_normalized_rows_have_unit_norm():
  x = np.random.default_rng(2).normal(size=(4, 9)) * 100
  np.testing.assert_allclose(
      np.linalg.norm(similarity.l2_normalize(x), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('x, y, error, match', [
    (np.zeros(3), None, ValueError, r'x must be 2-D .* got shape \(3,\)'),
    (np.zeros((2, 3)), np.zeros((2, 4)), ValueError,
     r'y must be 2-D \[m, 3\] .* got shape \(2, 4\)'),
    (np.zeros((2, 3), bool), None, TypeError, r'numeric, got dtype bool'),
])
def test_bad_input(x, y, error, match):
  with pytest.raises(error, match=match):
    tcm_jax.cosine_similarity(x, y)


SCALES = [1e-30, 1e-19, 1e19, 1e30, 1e37]  # no subnormal products


@pytest.mark.parametrize('scale', SCALES)
def test_similarity_does_not_depend_on_the_scale_of_the_rows(scale):
  """Rows whose squared norm overflows (or underflows) float32 included."""
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
  xs, ys = (np.float32(scale) * a.astype(np.float32) for a in (x, y))
  assert np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))
  np.testing.assert_allclose(tcm_jax.cosine_similarity(xs, ys),
                             reference.cosine(x, y), atol=2e-6)
  np.testing.assert_allclose(jax.jit(tcm_jax.cosine_similarity)(xs),
                             reference.cosine(x), atol=2e-6)
  unit = similarity.l2_normalize(xs)
  np.testing.assert_allclose(unit, x / np.linalg.norm(x, axis=1,
                                                      keepdims=True),
                             rtol=2e-6, atol=2e-7)


def test_rows_of_mixed_scales_and_the_largest_floats():
  big = np.finfo(np.float32).max
  x = np.array([[big, big], [-big, 0.0], [2e-38, 0.0], [0.0, 0.0],
                [1e-20, -1e-20]], np.float32)
  expected = np.array([[0.5**0.5, 0.5**0.5], [-1.0, 0.0], [1.0, 0.0],
                       [0.0, 0.0], [0.5**0.5, -(0.5**0.5)]])
  np.testing.assert_allclose(similarity.l2_normalize(x), expected, rtol=1e-6)


def test_gradients_are_those_of_the_unscaled_rows_divided_by_the_scale():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  g = rng.normal(size=(5, 3)).astype(np.float32)
  loss = lambda x: jnp.sum(g * similarity.l2_normalize(x))
  expected = jax.grad(loss)(x)
  for scale in (1e-30, 1e19, 1e30):
    got = jax.grad(loss)(np.float32(scale) * x)
    np.testing.assert_allclose(np.asarray(got, np.float64) * scale, expected,
                               rtol=1e-5, atol=1e-6)


def test_check_grads_of_normalisation_and_similarity():
  enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
                else jax.experimental.enable_x64)
  with enable_x64(True):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(4, 3)))
    y = jnp.asarray(rng.normal(size=(3, 3)))
    check_grads(similarity.l2_normalize, (x,), order=2, modes=('rev', 'fwd'))
    check_grads(tcm_jax.cosine_similarity, (x, y), order=1, modes=('rev',))
    # float64 squares overflow past 1e154: the rows are scaled first.
    big = 1e200 * x
    np.testing.assert_allclose(similarity.l2_normalize(big),
                               similarity.l2_normalize(x), rtol=1e-12)
    check_grads(lambda x: similarity.l2_normalize(1e200 * x), (x,), order=1,
                modes=('rev',))


def test_zero_rows_keep_their_convention_value_and_gradient():
  """A zero row stays zero; its gradient is that of `x / eps`."""
  x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], np.float32)
  jac = jax.jacobian(lambda x: similarity.l2_normalize(x)[0])(x)
  np.testing.assert_allclose(jac[:, 0], np.eye(3) * 1e12, rtol=1e-6)
  np.testing.assert_array_equal(jac[:, 1], np.zeros((3, 3)))
  np.testing.assert_allclose(similarity.l2_normalize(x)[1],
                             [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)
