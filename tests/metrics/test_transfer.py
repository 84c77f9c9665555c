"""Calibration transfer (a threshold chosen on one set, measured on another)
and its k-fold form, against brute force over the full matrices."""

import math

import jax
import numpy as np
import pytest

import tcm_jax
from tcm_jax import metrics
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import advanced
from tests.metrics.conftest import clustered_set

G = 2**14
BINS = 2 * G + G // 64 + 2


def _matrix(z, y=None):
  return np.asarray(tcm_jax.cosine_similarity(
      z, y, precision=jax.lax.Precision.HIGHEST))


def _split(similarity, labels):
  """Leave-one-out pairs: distances, positive mask, query labels."""
  labels = np.asarray(labels)
  d = np.float32(1) - np.asarray(similarity, np.float32)
  keep = ~np.eye(len(labels), dtype=bool)
  positive = labels[:, None] == labels[None, :]
  query = np.broadcast_to(labels[:, None], d.shape)
  return d[keep], positive[keep], query[keep]


def _edge(negatives, far):
  """The first grid edge where the FAR of `negatives` reaches `far`."""
  negatives = np.sort(negatives)
  needed = max(1, math.ceil(round(far * len(negatives), 9)))
  return np.ceil(np.float64(negatives[needed - 1]) * G) / G


def _check_at(point, d, positive, query, threshold, classes):
  assert point.threshold == threshold
  assert point.far == np.mean(d[~positive] <= threshold)
  assert point.frr == pytest.approx(np.mean(d[positive] > threshold),
                                    abs=1e-12)
  for i, c in enumerate(classes):
    mine = query == c
    assert point.class_far[i] == np.mean(d[mine & ~positive] <= threshold)
    assert point.class_frr[i] == pytest.approx(
        np.mean(d[mine & positive] > threshold), abs=1e-12)


def _histograms_of(similarity, labels):
  source = advanced.source_from_similarity(similarity, labels)
  return advanced.pair_histograms(source), source.classes


def test_a_hand_made_shift_between_the_sets():
  # Calibration negatives at bins 1000..1099, one pair each: FAR 0.1 is
  # reached at edge 1009. The evaluated set's negatives sit lower, at bins
  # 990..1039: 20 of its 50 are accepted there, FAR 0.4.
  calibration = _histograms.PairHistograms(
      np.zeros((2, BINS), np.int32), np.zeros((2, BINS), np.int32),
      BINS - 2)
  calibration.positive[:, 10] = 1
  calibration.negative[0, 1000:1050] = calibration.negative[1, 1050:1100] = 1
  evaluated = _histograms.PairHistograms(
      np.zeros((2, BINS), np.int32), np.zeros((2, BINS), np.int32),
      BINS - 2)
  evaluated.positive[0, 500] = evaluated.positive[1, 1500] = 4
  evaluated.negative[0, 990:1015] = evaluated.negative[1, 1015:1040] = 1
  got = advanced.transfer_from_histograms(
      calibration, evaluated, np.array([3, 8]), target_fars=(0.1, 0.5),
      min_false_accepts=5)
  at = got.points[0]
  assert at.threshold == 1009 / G
  assert at.calibration_far == 0.1
  assert at.far == 0.4
  np.testing.assert_array_equal(at.class_far, [20 / 25, 0])
  np.testing.assert_array_equal(at.class_frr, [0, 1])
  assert at.frr == 0.5
  # FAR 0.5: edge 1049 there; every evaluated negative (up to 1039) is in.
  assert got.points[1].far == 1.0
  np.testing.assert_array_equal(got.classes, [3, 8])
  assert got.num_calibration_negatives == 100


def test_two_sets_of_different_spread_equal_brute_force():
  # The calibration set is tighter than the evaluated one: the same FAR is
  # reached nearer, and the evaluated set's FAR there falls short of it.
  z, labels = clustered_set(0, [12] * 10, dim=6, spread=0.5)
  y, y_labels = clustered_set(1, [10] * 12, dim=6, spread=1.2)
  calibration, evaluated = _matrix(z), _matrix(y)
  (cal_hist, _), (eval_hist, classes) = (
      _histograms_of(calibration, labels), _histograms_of(evaluated, y_labels))
  targets = (0.01, 0.05, 0.2)
  got = advanced.transfer_from_histograms(cal_hist, eval_hist, classes,
                                          target_fars=targets)
  cal_d, cal_pos, _ = _split(calibration, labels)
  d, positive, query = _split(evaluated, y_labels)
  for target, point in zip(targets, got.points):
    threshold = _edge(cal_d[~cal_pos], target)
    assert point.calibration_far == np.mean(cal_d[~cal_pos] <= threshold)
    assert point.target_far == target
    _check_at(point, d, positive, query, threshold, np.unique(y_labels))
  assert got.points[0].far < 0.01  # the threshold does not transfer


def test_the_embeddings_function_and_unresolved_targets():
  z, labels = clustered_set(2, [8] * 10, dim=6)
  y, y_labels = clustered_set(3, [6] * 9, dim=6)
  got = metrics.calibration_transfer(y, y_labels, z, labels,
                                     target_fars=(1e-4, 0.01, 0.1))
  negatives = 80 * 72  # the calibration set's ordered negative pairs
  assert got.num_calibration_negatives == negatives
  assert got.points[0] is None  # 1e-4 * 5760 < 30
  again = advanced.transfer_from_histograms(
      *(advanced.pair_histograms(advanced.source_from_embeddings(a, b))
        for a, b in ((z, labels), (y, y_labels))),
      np.unique(y_labels), target_fars=(1e-4, 0.01, 0.1))
  assert got.to_dict() == again.to_dict()
  assert got.to_dict()['targets'][0] == {'target_far': 1e-4,
                                         'resolvable': False}


def test_calibrate_threshold_chosen_on_another_matrix():
  z, labels = clustered_set(4, [9] * 8, dim=5, spread=0.6)
  y, y_labels = clustered_set(5, [7] * 10, dim=5, spread=1.0)
  calibration, evaluated = _matrix(z), _matrix(y)
  got = metrics.calibrate_threshold(evaluated, y_labels, target_far=0.05,
                                    calibration=(calibration, labels))
  cal_d, cal_pos, _ = _split(calibration, labels)
  negatives = np.sort(cal_d[~cal_pos])
  exact = negatives[math.ceil(0.05 * len(negatives)) - 1]
  assert abs(got.threshold - exact) <= 0.5 / G  # a fine bin's midpoint
  assert got.calibration_far == np.mean(cal_d[~cal_pos] <= got.threshold)
  d, positive, query = _split(evaluated, y_labels)
  _check_at(got, d, positive, query, got.threshold, np.unique(y_labels))
  # Without a calibration set, the threshold is the evaluated set's own.
  own = metrics.calibrate_threshold(evaluated, y_labels, target_far=0.05)
  assert own.calibration_far is None and own.threshold != got.threshold


def _reference_folds(similarity, labels, folds, seed, target):
  classes = np.unique(labels)
  order = np.random.default_rng(seed).permutation(len(classes))
  fold_of_class = np.empty(len(classes), int)
  fold_of_class[order] = np.arange(len(classes)) % folds
  fold = fold_of_class[np.searchsorted(classes, labels)]
  parts = []
  for f in range(folds):
    rows = np.flatnonzero(fold == f)
    parts.append(_split(similarity[np.ix_(rows, rows)], labels[rows]))
  out = []
  for f in range(folds):
    pool = np.concatenate([d[~p] for g, (d, p, _) in enumerate(parts)
                           if g != f])
    out.append((_edge(pool, target), parts[f],
                np.unique(labels[fold == f])))
  return out


def test_folds_of_classes_equal_brute_force():
  sizes = np.random.default_rng(6).integers(2, 14, size=23)
  z, labels = clustered_set(6, sizes, dim=6)
  similarity = _matrix(z)
  targets = (0.02, 0.1)
  got = metrics.fold_transfer(z, labels, folds=4, target_fars=targets,
                              seed=7)
  assert got.target_fars == targets and got.unresolved_fars == ()
  assert [len(c) for c in got.fold_classes] == [6, 6, 6, 5]
  np.testing.assert_array_equal(np.sort(np.concatenate(got.fold_classes)),
                                np.unique(labels))
  row = 0
  for j, target in enumerate(targets):
    reference = _reference_folds(similarity, labels, 4, 7, target)
    row = 0
    for f, (threshold, (d, positive, query), classes) in enumerate(
        reference):
      np.testing.assert_array_equal(got.fold_classes[f], classes)
      assert got.threshold[f, j] == threshold
      # Products of other shapes than the whole matrix's: a pair within an
      # ulp of an edge may move, one pair in thousands at most.
      assert got.far[f, j] == pytest.approx(
          np.mean(d[~positive] <= threshold), abs=2e-3)
      assert got.frr[f, j] == pytest.approx(
          np.mean(d[positive] > threshold), abs=2e-2)
      for c in classes:
        mine = query == c
        np.testing.assert_array_equal(got.classes[row], c)
        assert got.class_frr[row, j] == pytest.approx(
            np.mean(d[mine & positive] > threshold), abs=0.05)
        row += 1
  assert row == len(got.classes) == len(np.unique(labels))
  summary = got.to_dict()['targets'][1]
  assert summary['far_mean'] == pytest.approx(np.mean(got.far[:, 1]))
  assert summary['far_std'] == pytest.approx(np.std(got.far[:, 1]))


def test_the_folds_are_seeded():
  z, labels = clustered_set(8, [6] * 12, dim=4)
  one = metrics.fold_transfer(z, labels, folds=3, seed=1)
  two = metrics.fold_transfer(z, labels, folds=3, seed=1)
  other = metrics.fold_transfer(z, labels, folds=3, seed=2)
  np.testing.assert_array_equal(one.far, two.far)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(one.fold_classes, other.fold_classes))


def test_bad_input_is_named():
  z, labels = clustered_set(9, [6] * 6, dim=4)
  with pytest.raises(ValueError, match='the calibration set needs at least '
                     'two classes'):
    metrics.calibration_transfer(z, labels, z[:6], labels[:6])
  with pytest.raises(ValueError, match=r'calibration_embeddings must have the '
                     r'dimension of embeddings \(4\), got 3'):
    metrics.calibration_transfer(z, labels, z[:, :3], labels)
  with pytest.raises(ValueError, match='target_fars must be a false-accept '
                     r'rate in \(0, 1\], got 1.5'):
    metrics.calibration_transfer(z, labels, z, labels, target_fars=(1.5,))
  with pytest.raises(ValueError, match='folds=7 is more than the 6 classes'):
    metrics.fold_transfer(z, labels, folds=7)
  with pytest.raises(ValueError, match='folds must be'):
    metrics.fold_transfer(z, labels, folds=1)
  with pytest.raises(ValueError, match=r'fold \d needs at least two classes'):
    metrics.fold_transfer(z, labels, folds=6)
  with pytest.raises(ValueError, match='no target in target_fars'):
    metrics.fold_transfer(z, labels, folds=2, target_fars=(1e-4,))
  with pytest.raises(ValueError, match='calibration must be'):
    metrics.calibrate_threshold(_matrix(z), labels, calibration='S')
