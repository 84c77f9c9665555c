"""Recall@K, MAP@R and R-precision against the NumPy reference."""

import numpy as np
import pytest

from tcm_jax import metrics
from tests.metrics import reference
from tests.metrics.conftest import clustered_set
from tests.metrics.conftest import cosine

KS = (1, 2, 4, 8, 16)


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('block_size', [None, 13])
def test_matches_reference(ties, block_size):
  z, labels = clustered_set(5, [3, 17, 1, 9, 30, 5, 12, 1, 8], spread=1.5)
  s = cosine(z)
  if ties:  # coarse similarities: many ties, broken by reference index
    s = np.round(s * 8) / 8
  recall, map_r, r_prec, excluded = reference.retrieval(s, labels, KS)
  got = metrics.recall_at_k(s, labels, ks=KS, block_size=block_size)
  assert got.keys() == recall.keys()
  for k in KS:
    assert abs(got[k] - recall[k]) < 1e-6, k
  assert abs(metrics.map_at_r(s, labels, block_size=block_size) - map_r) < 1e-6
  assert abs(metrics.r_precision(s, labels, block_size=block_size)
             - r_prec) < 1e-6
  assert excluded == 2  # the two singleton classes


def test_queries_against_separate_references():
  z, labels = clustered_set(6, [6, 9, 4, 7], spread=1.5)
  s = cosine(z[:10], z[10:])
  recall, map_r, r_prec, _ = reference.retrieval(s, labels[:10], (1, 3),
                                                 labels[10:])
  source = metrics.evaluate_similarity(
      s, labels[:10], labels[10:], ks=(1, 3), distance_range=(0.0, 1.0))
  assert source.retrieval.recall_at_k == pytest.approx(recall, abs=1e-6)
  assert source.retrieval.map_at_r == pytest.approx(map_r, abs=1e-6)
  assert source.retrieval.r_precision == pytest.approx(r_prec, abs=1e-6)


def test_ties_are_broken_by_reference_index():
  s = np.array([[1.0, 0.5, 0.5, 0.5],
                [0.5, 1.0, 0.5, 0.5],
                [0.5, 0.5, 1.0, 0.5],
                [0.5, 0.5, 0.5, 1.0]], np.float32)
  # Query 3 sees 0, 1, 2 tied: 0 (its class) comes first. Query 0 sees 1
  # first (another class), then 2, then 3 (its class).
  got = metrics.recall_at_k(s, [0, 1, 2, 0], ks=(1, 2, 3))
  assert got == {1: 0.5, 2: 0.5, 3: 1.0}


def test_negative_and_positive_zero_tie():
  s = np.array([[1.0, -0.0, 0.0], [-0.0, 1.0, 0.5], [0.0, 0.5, 1.0]],
               np.float32)
  # Query 0 ties -0.0 (ref 1, other class) with +0.0 (ref 2, its class):
  # the lower index, ref 1, comes first.
  assert metrics.recall_at_k(s, [0, 1, 0], ks=(1,)) == {1: 0.0}
