"""Shared evaluation sets for the metric tests."""

import numpy as np


def clustered_set(seed, class_sizes, dim=8, spread=1.0):
  """Embeddings around one random centre per class, with unequal sizes."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
  centres = rng.normal(size=(len(class_sizes), dim))
  z = centres[labels] + spread * rng.normal(size=(len(labels), dim))
  order = rng.permutation(len(labels))
  return z[order].astype(np.float32), labels[order]


def cosine(z, y=None):
  z = np.asarray(z, np.float64)
  y = z if y is None else np.asarray(y, np.float64)
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  yn = y / np.linalg.norm(y, axis=1, keepdims=True)
  return (zn @ yn.T).astype(np.float32)
