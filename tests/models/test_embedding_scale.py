"""The embedding head's L2 normalisation does not depend on the scale of its
projection: huge (or tiny) but finite outputs give the same unit embeddings."""

import numpy as np
import pytest
from flax import nnx

from tcm_jax import models


def _head_and_features(pool):
  head = models.EmbeddingHead(6, 4, pool=pool, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  shape = (3, 2, 2, 6) if pool == 'gem' else (3, 5, 6)
  features = np.abs(rng.normal(size=shape)).astype(np.float32)
  return head, features


@pytest.mark.parametrize('pool', ['gem', 'cls'])
@pytest.mark.parametrize('scale', [1e19, 1e30, 1e-25])
def test_scaled_projection_gives_the_same_unit_embeddings(pool, scale):
  head, features = _head_and_features(pool)
  expected = np.asarray(head(features))
  np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0,
                             rtol=1e-6)
  head.proj.kernel[...] = head.proj.kernel[...] * np.float32(scale)
  head.proj.bias[...] = head.proj.bias[...] * np.float32(scale)
  raw = head.proj(head.norm(head.gem(features) if pool == 'gem'
                            else features[:, 0]))
  # The projection itself is finite; its squared norm would not be.
  assert np.all(np.isfinite(np.asarray(raw)))
  got = head(features)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  jitted = nnx.jit(lambda h, f: h(f))(head, features)
  np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-6)


def test_gradients_through_a_huge_projection_are_finite_and_scaled():
  head, features = _head_and_features('gem')
  g = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  loss = lambda head: (g * head(features)).sum()
  expected = nnx.grad(loss)(head).proj.kernel[...]
  head.proj.kernel[...] = head.proj.kernel[...] * np.float32(1e19)
  got = nnx.grad(loss)(head).proj.kernel[...]
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got, np.float64) * 1e19, expected,
                             rtol=1e-4, atol=1e-6)
