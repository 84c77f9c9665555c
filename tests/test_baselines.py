"""Raw-input baselines against scikit-learn and hand computations."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from tcm_jax import baselines


def test_pixel_features_scale_and_flatten_in_pixel_order():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
  features = baselines.pixel_features(list(images))
  assert features.dtype == np.float32
  np.testing.assert_array_equal(
      features[2], images[2].reshape(-1).astype(np.float32) / 255)
  # Grayscale images without a channel axis are the same as with one.
  np.testing.assert_array_equal(
      baselines.pixel_features(list(images[..., 0])),
      baselines.pixel_features(list(images[..., :1])))


def test_large_or_unequal_images_are_resized_to_size():
  small = np.zeros((8, 8), np.uint8)
  large = np.full((33, 70), 255, np.uint8)
  assert baselines.pixel_features([small, small]).shape == (2, 64)
  assert baselines.pixel_features([np.zeros((32, 32), np.uint8)]).shape == (
      1, 1024)  # 32 px: as stored
  assert baselines.pixel_features([large], size=16).shape == (1, 256)
  mixed = baselines.pixel_features([small, np.zeros((9, 8), np.uint8)],
                                   size=4)
  assert mixed.shape == (2, 16)
  np.testing.assert_array_equal(
      baselines.pixel_features([large], size=16), 1.0)


def test_pixel_features_need_images():
  with pytest.raises(ValueError, match='at least one image'):
    baselines.pixel_features([])


def test_whitened_pca_equals_scikit_learn_up_to_signs():
  rng = np.random.default_rng(1)
  train = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
  test = rng.normal(size=(50, 20)) @ rng.normal(size=(20, 20))
  ours = baselines.WhitenedPCA(train, 5)(test)
  theirs = PCA(5, whiten=True, svd_solver='full').fit(train).transform(test)
  signs = np.sign(np.sum(ours * theirs, axis=0))
  np.testing.assert_allclose(ours, theirs * signs, rtol=1e-4, atol=1e-4)


def test_whitened_pca_gives_unit_variance_on_training_data():
  rng = np.random.default_rng(2)
  train = rng.normal(size=(400, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1, 0.01])
  projected = baselines.WhitenedPCA(train, 4)(train)
  np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-5)
  np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(4),
                             atol=1e-4)


def test_whitened_pca_drops_directions_without_variance():
  rng = np.random.default_rng(3)
  train = np.zeros((50, 10))
  train[:, :2] = rng.normal(size=(50, 2))  # rank 2
  assert baselines.WhitenedPCA(train, 8)(train).shape == (50, 2)


@pytest.mark.parametrize('features, components, message', [
    (np.zeros((1, 4)), 2, 'n >= 2'),
    (np.zeros(4), 2, 'n >= 2'),
    (np.ones((5, 4)), 0, r'components must be an integer >= 1, got 0\.'),
    # A bool was once taken for 1 component.
    (np.ones((5, 4)), True, r'components must be an integer >= 1, got True\.'),
    (np.ones((5, 4)), 2.0, r'components must be an integer >= 1, got 2\.0\.'),
    (np.ones((5, 4)), 2, 'do not vary'),
])
def test_whitened_pca_errors(features, components, message):
  with pytest.raises(ValueError, match=message):
    baselines.WhitenedPCA(features, components)


def test_baseline_features_fit_the_pca_on_the_training_images_only():
  rng = np.random.default_rng(4)
  train = rng.integers(0, 256, (60, 6, 6), dtype=np.uint8)
  test = rng.integers(0, 256, (10, 6, 6), dtype=np.uint8)
  features = baselines.baseline_features(train, test, pca_components=8)
  np.testing.assert_array_equal(features['pixels'],
                                test.reshape(10, -1).astype(np.float32) / 255)
  expected = baselines.WhitenedPCA(
      train.reshape(60, -1).astype(np.float32) / 255, 8)(features['pixels'])
  np.testing.assert_allclose(features['pca8'], expected, rtol=1e-6)
  # Other test images do not change the projection of these.
  more = baselines.baseline_features(
      train, np.concatenate([test, test[::-1] // 2]), pca_components=8)
  np.testing.assert_allclose(more['pca8'][:10], features['pca8'], rtol=1e-6)
