"""Bootstrap intervals of the operating points: each resample against brute
force over the flattened pairs repeated as often as their class is drawn,
seeded reproducibility, and coverage where the answer is known."""

import math

import jax
import numpy as np
import pytest

import tcm_jax
from tcm_jax import metrics
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _point_intervals
from tcm_jax.metrics import advanced
from tests.metrics.conftest import clustered_set

G = 2**14
BINS = 2 * G + G // 64 + 2


def _set(seed=0):
  sizes = np.random.default_rng(seed).integers(2, 14, size=24)
  sizes[:2] = 1
  return clustered_set(seed, sizes, dim=6)


def _histograms_of(z, labels):
  similarity = np.asarray(tcm_jax.cosine_similarity(
      z, z, precision=jax.lax.Precision.HIGHEST))
  source = advanced.source_from_similarity(similarity, labels)
  return advanced.pair_histograms(source), similarity


def test_the_estimates_are_the_operating_points():
  z, labels = _set()
  histograms, _ = _histograms_of(z, labels)
  fars = (1e-3, 0.02, 0.2)
  intervals = advanced.operating_point_intervals(
      histograms, fars=fars, target_far=0.05, num_resamples=50)
  points = advanced.operating_points_from_histograms(histograms, fars=fars,
                                                     target_far=0.05)
  assert sorted(intervals) == ['auc', 'eer', 'global_threshold',
                               'tar_at_0.02', 'tar_at_0.2']  # not 1e-3
  assert intervals['eer'].estimate == pytest.approx(points.eer, abs=1e-12)
  assert intervals['auc'].estimate == pytest.approx(points.auc, abs=1e-12)
  assert intervals['global_threshold'].estimate == points.calibration.threshold
  for point in points.tar_at_far[1:]:
    assert intervals[f'tar_at_{point.target_far:g}'].estimate == (
        pytest.approx(point.tar, abs=1e-12))
  for interval in intervals.values():
    assert interval.low <= interval.estimate <= interval.high
    assert interval.num_resamples == 50


def _brute_force(similarity, labels, weight_of_class, far, target_far):
  """Every statistic over the pairs, each pair counted as often as its
  query's class is drawn: by sorting and comparing, on the grid edges."""
  labels = np.asarray(labels)
  d = np.float32(1) - similarity.astype(np.float32)
  keep = ~np.eye(len(labels), dtype=bool)
  positive = (labels[:, None] == labels[None, :])[keep]
  weight = np.broadcast_to(weight_of_class[labels][:, None], d.shape)[keep]
  edges = np.ceil(d[keep].astype(np.float64) * G)  # each pair's grid edge
  grid = np.arange(BINS - 1)

  def accepted(mask):  # the weight of the pairs with edge <= k, each k
    order = np.argsort(edges[mask], kind='stable')
    cumulative = np.concatenate([[0], np.cumsum(weight[mask][order])])
    return cumulative[np.searchsorted(edges[mask][order], grid, 'right')]

  pos, neg = accepted(positive), accepted(~positive)

  def first_edge(target):
    return int(np.flatnonzero(neg >= max(1, math.ceil(
        round(target * neg[-1], 9))))[0])

  tar = pos[first_edge(far)] / pos[-1]
  far_curve = np.concatenate([[0], neg / neg[-1]])
  frr_curve = np.concatenate([[1], 1 - pos / pos[-1]])
  gap = far_curve - frr_curve
  k = np.flatnonzero(gap >= 0)[0]
  share = -gap[k - 1] / (gap[k] - gap[k - 1])
  eer = far_curve[k - 1] + share * (far_curve[k] - far_curve[k - 1])
  # AUC: positive-negative pairs of pairs, ordered by grid edge, ties half.
  pos_w = np.bincount(edges[positive].astype(int), weight[positive],
                      minlength=BINS)
  neg_w = np.bincount(edges[~positive].astype(int), weight[~positive],
                      minlength=BINS)
  wins = sum(neg_w[k] * (pos_w[:k].sum() + pos_w[k] / 2)
             for k in np.flatnonzero(neg_w))
  auc = wins / (pos_w.sum() * neg_w.sum())
  return tar, first_edge(target_far) / G, eer, auc


def test_each_resample_against_brute_force():
  z, labels = _set(seed=1)
  histograms, similarity = _histograms_of(z, labels)
  rows = (histograms.positive.sum(1) + histograms.negative.sum(1)) > 0
  assert rows.all()  # every class has a query here
  rng = np.random.default_rng(2)
  weights = np.stack([np.bincount(rng.integers(0, rows.sum(), rows.sum()),
                                  minlength=rows.sum()) for _ in range(3)])
  got = _point_intervals.resampled_statistics(
      weights @ histograms.positive[:, :-1], weights @ histograms.negative[
          :, :-1], 0, (0.05,), 0.1)
  classes = np.unique(labels)
  for b, weight in enumerate(weights):
    tar, threshold, eer, auc = _brute_force(
        similarity, np.searchsorted(classes, labels), weight, 0.05, 0.1)
    assert got['tar_at_0.05'][b] == pytest.approx(tar, abs=1e-12)
    assert got['global_threshold'][b] == threshold
    assert got['eer'][b] == pytest.approx(eer, abs=1e-12)
    assert got['auc'][b] == pytest.approx(auc, abs=1e-12)


def test_the_intervals_are_seeded():
  z, labels = _set(seed=3)
  histograms, _ = _histograms_of(z, labels)
  one = advanced.operating_point_intervals(histograms, fars=(0.1,),
                                           num_resamples=100, seed=4)
  two = advanced.operating_point_intervals(histograms, fars=(0.1,),
                                           num_resamples=100, seed=4)
  other = advanced.operating_point_intervals(histograms, fars=(0.1,),
                                             num_resamples=100, seed=5)
  assert one == two
  assert one['eer'] != other['eer']


def _known_population(rng, num_classes):
  """Every class has the same negatives, one pair per bin 800..1599, so FAR
  0.25 is reached at edge 999 in every resample; its 4 positive pairs sit at
  one distance bin drawn uniformly from 0..1599. TAR at FAR 0.25 is then
  the share of classes whose bin is at most 999: 0.625 in the population.
  (The histograms stop at bin 1700, past every pair.)"""
  positive = np.zeros((num_classes, 1702), np.int64)
  negative = np.zeros((num_classes, 1702), np.int64)
  negative[:, 800:1600] = 1
  positive[np.arange(num_classes), rng.integers(0, 1600, num_classes)] = 4
  return _histograms.PairHistograms(positive, negative, 1700)


def test_the_interval_covers_a_known_answer_at_its_rate():
  rng = np.random.default_rng(6)
  covered, repetitions = 0, 200
  for repetition in range(repetitions):
    histograms = _known_population(rng, 150)
    interval = advanced.operating_point_intervals(
        histograms, fars=(0.25,), num_resamples=400, seed=repetition,
        confidence=0.9)['tar_at_0.25']
    covered += interval.low <= 0.625 <= interval.high
  # 90% nominal; a binomial over 200 repetitions: 180 +- 4.2 (1 sd).
  assert 166 <= covered <= 193


def test_counts_too_large_for_float32_give_the_same_intervals():
  # Every count times 2**22 + 1: sums past float32's exact integers (float32
  # products would be off by about 5e-9), so the products run in float64;
  # the rates, and so the intervals, are those of the counts as they were.
  small = _known_population(np.random.default_rng(8), 40)
  scale = 2**22 + 1
  large = _histograms.PairHistograms(small.positive * scale,
                                     small.negative * scale, small.cut_bin)
  args = dict(fars=(0.25,), num_resamples=30, seed=1)
  got = advanced.operating_point_intervals(large, **args)
  want = advanced.operating_point_intervals(small, **args)
  for name, interval in want.items():
    for field in ('estimate', 'low', 'high', 'std'):
      assert getattr(got[name], field) == pytest.approx(
          getattr(interval, field), rel=1e-12, abs=1e-15), (name, field)


def test_singletons_are_held_fixed_and_the_draws_are_class_bootstrap_s():
  # Two classes of one sample: no positive pair. A resample of every class
  # could draw none with a positive (a NaN TAR); they are held fixed instead,
  # and the draws are those of class_bootstrap over the evaluated classes.
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 3])
  z = np.random.default_rng(9).normal(size=(8, 4)) + 2 * np.eye(4)[labels % 4]
  histograms, _ = _histograms_of(z, labels)
  intervals = advanced.operating_point_intervals(histograms, fars=(0.1,),
                                                 num_resamples=200, seed=3)
  for interval in intervals.values():
    assert np.isfinite([interval.low, interval.high, interval.std]).all()
  assert intervals['eer'].estimate == pytest.approx(
      advanced.operating_points_from_histograms(histograms).eer, abs=1e-12)
  one_class = _histograms.PairHistograms(
      histograms.positive * (np.arange(4) == 0)[:, None], histograms.negative,
      histograms.cut_bin)
  with pytest.raises(ValueError, match='at least two classes'):
    advanced.operating_point_intervals(one_class)


def test_bad_arguments_are_named():
  z, labels = _set(seed=7)
  histograms, _ = _histograms_of(z, labels)
  with pytest.raises(ValueError, match='num_resamples'):
    advanced.operating_point_intervals(histograms, num_resamples=0)
  with pytest.raises(ValueError, match='confidence'):
    advanced.operating_point_intervals(histograms, confidence=1.0)
  with pytest.raises(ValueError, match='fars must be'):
    advanced.operating_point_intervals(histograms, fars=(2.0,))
  cut = _histograms.PairHistograms(histograms.positive, histograms.negative,
                                   BINS - 3)  # a last column of pairs
  cut.positive[:, -1] += 1
  with pytest.raises(_histograms.BeyondCutError):
    advanced.operating_point_intervals(cut)
