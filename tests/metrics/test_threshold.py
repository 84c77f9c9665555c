"""The calibration range and the global threshold against exact quantiles."""

import jax.numpy as jnp
import numpy as np
import pytest

from tcm_jax import metrics
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine


@pytest.mark.parametrize('far_range', [(1e-3, 1e-1), (0.01, 0.5)])
def test_range_bounds_are_within_1e4_of_exact_quantiles(far_range):
  z, labels = clustered_set(7, [20, 35, 11, 40, 26])
  s = cosine(z)
  got = metrics.calibration_range(s, labels, far_range=far_range)
  assert got.far == far_range
  for bound, far in zip(got.distance, far_range):
    assert abs(bound - reference.far_quantile(s, labels, far)) <= 2**-15


@pytest.mark.parametrize('target_far', [1e-3, 1e-2, 0.2])
def test_global_threshold_and_per_class_rates(target_far):
  z, labels = clustered_set(8, [20, 35, 11, 40, 26], spread=1.2)
  s = cosine(z)
  got = metrics.calibrate_threshold(s, labels, target_far=target_far)
  exact = reference.far_quantile(s, labels, target_far)
  assert abs(got.threshold - exact) <= 2**-15
  # Exact rates at the threshold returned.
  t = np.float32(got.threshold)
  negatives = reference.negative_distances(s, labels)
  assert got.far == pytest.approx(np.mean(negatives <= t), abs=1e-12)
  classes, tpr, tnr = reference.class_rates(s, labels, None, [t])
  np.testing.assert_allclose(got.class_frr, 1 - tpr[:, 0], atol=1e-12)
  np.testing.assert_allclose(got.class_far, 1 - tnr[:, 0], atol=1e-12)
  assert got.far_spread['worst'] == pytest.approx(np.max(1 - tnr[:, 0]))
  assert got.frr_spread['best'] == pytest.approx(np.min(1 - tpr[:, 0]))
  assert got.frr_spread['std'] == pytest.approx(np.std(1 - tpr[:, 0]))


def _unit_set():
  z, labels = clustered_set(12, [6, 7, 5, 8])
  return cosine(z), labels


_NOT_COSINE = (r'similarity must hold cosine similarities, in \[-1, 1\] '
               r'\(within 0\.01\); got values from -[\d.]+ to 3 '
               r'\(\d+ of 676 beyond\)\. A dot product of unnormalised '
               r'embeddings is the usual mistake')


@pytest.mark.parametrize('metric', [
    lambda s, y: metrics.opis(s, y),
    lambda s, y: metrics.utility_curves(s, y, distance_range=(0.1, 0.9)),
    lambda s, y: metrics.calibration_range(s, y),
    lambda s, y: metrics.calibrate_threshold(s, y),
    lambda s, y: metrics.recall_at_k(s, y),
    lambda s, y: metrics.evaluate_similarity(s, y),
], ids=['opis', 'utility_curves', 'calibration_range', 'calibrate_threshold',
        'recall_at_k', 'evaluate_similarity'])
def test_similarities_beyond_one_are_refused(metric):
  s, labels = _unit_set()
  # 3 * S once gave an OPIS of its own: distances clipped to [0, 2].
  with pytest.raises(ValueError, match=_NOT_COSINE):
    metric(3 * s, labels)


def test_the_similarity_range_allows_float_rounding_only():
  s, labels = _unit_set()
  np.fill_diagonal(s, 1.0 + 8e-3)  # within the tolerance
  s[0, 1] = s[1, 0] = -1.0 - 8e-3
  assert metrics.recall_at_k(s, labels, ks=(1,))[1] >= 0
  s[2, 3] = 1.0 + 2e-2  # beyond it
  with pytest.raises(ValueError, match=r'from -1\.008 to 1\.02 \(1 of '
                     r'676 beyond\)'):
    metrics.recall_at_k(s, labels, ks=(1,))


def test_a_bfloat16_matrix_product_of_unit_rows_is_a_cosine():
  # The TPU's default precision: the product of unit rows in bfloat16 passes
  # strays beyond 1 by a few thousandths; that is still a cosine.
  z, labels = clustered_set(12, [6, 7, 5, 8])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  zb = jnp.asarray(z, jnp.bfloat16)
  s = np.asarray(jnp.matmul(zb, zb.T, preferred_element_type=jnp.float32))
  assert np.abs(s).max() > 1 + 1e-5  # what the old tolerance refused
  np.testing.assert_allclose(metrics.opis(s, labels),
                             metrics.opis(np.clip(s, -1, 1), labels),
                             rtol=1e-6)


def test_a_dot_product_of_unnormalised_embeddings_is_refused_as_such():
  # Once refused as a collapsed calibration range, advising distance_range.
  z, labels = clustered_set(12, [6, 7, 5, 8])
  with pytest.raises(ValueError, match=r'A dot product of unnormalised '
                     r'embeddings is the usual mistake: pass '
                     r'tcm_jax\.cosine_similarity\(z\), or the embeddings '
                     r'to metrics\.evaluate_embeddings'):
    metrics.evaluate_similarity(z @ z.T, labels)


def test_a_collapsed_embedding_is_named_as_such():
  z, labels = clustered_set(13, [5, 6, 7], dim=4)  # 214 negative pairs
  collapsed = np.ones_like(z) + 1e-9 * z  # every row in one direction
  with pytest.raises(metrics.CalibrationRangeError, match=(
      r'the calibration range collapsed: 100\.0% of the 214 negative pairs '
      r'are at distance 0\.0000\d+ \(cosine 0\.99\d+\), so FAR 0\.001 and 0\.1 '
      r'are reached within one 2\*\*-14 distance bin\. The classes are not '
      r'told apart: the embeddings have collapsed \(different classes point '
      r'the same way\)\. Check the model and its inputs; to measure such an '
      r'embedding anyway, pass distance_range\.')):
    metrics.evaluate_embeddings(collapsed, labels)


def test_a_far_range_too_narrow_for_its_negatives_is_named_as_such():
  z, labels = clustered_set(13, [5, 6, 7], dim=4)  # spread negatives
  with pytest.raises(metrics.CalibrationRangeError, match=(
      r'^the calibration range is empty: \d+\.\d% of the 214 negative pairs '
      r'.* so FAR 0\.1 and 0\.1000001 are reached within one 2\*\*-14 '
      r'distance bin\. far_range \(a width of 1e-07\) is narrower than the '
      r'negative pairs of one bin: widen it, or pass distance_range\.$')):
    metrics.evaluate_embeddings(z, labels, far_range=(0.1, 0.1000001))


def test_a_partial_collapse_is_named_a_collapse():
  # Half the rows of every class on one point: a quarter of the negative
  # pairs at distance 0, the rest spread.
  rng = np.random.default_rng(0)
  labels = np.arange(1000) % 20
  z = rng.normal(size=(1000, 32)) + 3 * rng.normal(size=(20, 32))[labels]
  z[:500] = 1.0
  with pytest.raises(metrics.CalibrationRangeError, match=(
      r'^the calibration range collapsed: 2\d\.\d% of the \d+ negative pairs '
      r'are at distance 0\.0000.*point the same way')):
    metrics.evaluate_embeddings(z, labels)


def test_zero_embeddings_are_named_as_the_likely_cause():
  z, labels = clustered_set(13, [5, 6, 7], dim=4)
  z[:] = 0.0
  with pytest.raises(metrics.CalibrationRangeError, match=(
      r'100\.0% of the 214 negative pairs are at distance 1\.0000\d+ '
      r'\(cosine -?0\.0000\d+\).*collapsed \(all at cosine 0 is what zero '
      r'embeddings give\)')):
    metrics.evaluate_embeddings(z, labels)
