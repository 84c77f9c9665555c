"""Tests of cosine_similarity and l2_normalize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
