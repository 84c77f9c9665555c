"""The calibration range and the global threshold against exact quantiles."""

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
