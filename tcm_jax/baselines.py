"""Raw-input baselines: what a model's embedding must beat.

A learned embedding is only worth its training if it retrieves better than the
inputs themselves. Two baselines, both compared by cosine through the same
metrics as a model's embeddings:

- `pixels`: each image as its pixel values in [0, 1], flattened. Images of
  equal size up to `max_side` (32) pixels are used as stored; larger images,
  or images of different sizes, are resized (Pillow bilinear) to
  `size x size` (32 x 32), which bounds the features at 3,072 values.
- `pca`: those pixels projected on the leading principal components of the
  *training* classes' pixels and whitened (each component scaled to unit
  variance), so no statistic of the test classes is used.

NumPy only; the trainer puts both in every run's report and `metrics.json`.
"""

from __future__ import annotations

from collections.abc import Iterable
import itertools

import numpy as np

from tcm_jax import _checks
from tcm_jax.data import transforms


def pixel_features(images: Iterable[np.ndarray], *, max_side: int = 32,
                   size: int = 32) -> np.ndarray:
  """float32 `[n, pixels]`: uint8 images scaled to [0, 1] and flattened.

  Args:
    images: uint8 `[H, W]` or `[H, W, C]` images.
    max_side: images no larger than this on either side are kept as stored
      when they all have one shape.
    size: the side that larger or unequal images are resized to.

  Raises:
    ValueError: no images.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import baselines
    >>> baselines.pixel_features([np.full((8, 8), 255, np.uint8)] * 3).shape
    (3, 64)
    >>> baselines.pixel_features([np.zeros((100, 80, 3), np.uint8)]).shape
    (1, 3072)
    >>> baselines.pixel_features([np.zeros((8, 8), np.uint8),
    ...                           np.zeros((9, 8), np.uint8)]).shape
    (2, 1024)
  """
  kept = []
  for image in images:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if max(image.shape[:2]) > max_side:
      image = transforms.resize(image, size)
    kept.append(image)
  if not kept:
    raise ValueError('pixel_features needs at least one image, got none.')
  if len({image.shape for image in kept}) > 1:
    kept = [transforms.resize(image, size) for image in kept]
  features = np.stack(kept).reshape(len(kept), -1).astype(np.float32)
  features /= 255  # in place: the features can be large
  return features


class WhitenedPCA:
  """Principal components of training features, whitened.

  `WhitenedPCA(train, components)(x)` centres `x` on the training mean,
  projects it on the `components` leading directions of the training
  features, and divides each by its training standard deviation. Directions
  with (numerically) no variance are dropped, so the result may have fewer
  columns than asked for.

  Args:
    features: `[n, d]` training features, n >= 2.
    components: the most components kept, >= 1.

  Raises:
    ValueError: fewer than two training rows, `components` < 1, or no
      direction with variance.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import baselines
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(size=(500, 3)) * [10.0, 1.0, 0.1]
    >>> pca = baselines.WhitenedPCA(train, 2)
    >>> np.round(pca(train).std(axis=0, ddof=1), 6).tolist()
    [1.0, 1.0]
  """

  def __init__(self, features: np.ndarray, components: int):
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
      raise ValueError(f'WhitenedPCA needs [n >= 2, d] training features, got '
                       f'shape {x.shape}.')
    components = _checks.check_int('components', components, 1)
    self.mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - self.mean, full_matrices=False)
    keep = singular[:components] > 1e-6 * singular[0]
    if not keep.any():
      raise ValueError('WhitenedPCA: the training features do not vary.')
    self.directions = vt[:components][keep]
    self.scale = singular[:components][keep] / np.sqrt(len(x) - 1)

  def __call__(self, features: np.ndarray) -> np.ndarray:
    projected = (np.asarray(features, np.float64) - self.mean) @ self.directions.T
    return (projected / self.scale).astype(np.float32)


def baseline_features(train_images: Iterable[np.ndarray],
                      test_images: Iterable[np.ndarray], *,
                      pca_components: int = 64) -> dict[str, np.ndarray]:
  """The test images as each baseline's features: `{'pixels', 'pca<k>'}`.

  Both sides go through one `pixel_features`, so they are resized (or not)
  alike; the PCA is fitted on `train_images` alone.

  Args:
    train_images: images of the training classes, which fit the PCA.
    test_images: the images to represent.
    pca_components: components of the whitened PCA.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import baselines
    >>> rng = np.random.default_rng(0)
    >>> train = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)
    >>> test = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    >>> {k: v.shape for k, v in baselines.baseline_features(
    ...     train, test, pca_components=16).items()}
    {'pixels': (20, 64), 'pca16': (20, 16)}
  """
  num_train = 0

  def counted(images):
    nonlocal num_train
    for image in images:
      num_train += 1
      yield image

  # Streamed: only images of at most `max_side` pixels are held unresized.
  features = pixel_features(itertools.chain(counted(train_images),
                                            test_images))
  train, test = features[:num_train], features[num_train:]
  pca = WhitenedPCA(train, pca_components)
  return {'pixels': test, f'pca{pca_components}': pca(test)}
