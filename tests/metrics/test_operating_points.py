"""Operating points (TAR@FAR, EER, ROC AUC, each class's own threshold)
against a brute-force NumPy reference over the flattened pairs, and the EER
and AUC against scikit-learn's `roc_curve` and `roc_auc_score`.

The reference reads every rate at grid edges `k / 2**14` by comparing each
pair's float32 distance `1 - S` with the edge; it shares no code with
tcm_jax.
"""

import math

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

import tcm_jax
from tcm_jax import metrics
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import advanced
from tests.metrics.conftest import clustered_set

G = 2**14
LAST_EDGE = 2 * G + G // 64


def _matrix(z, y=None):
  return np.asarray(tcm_jax.cosine_similarity(
      z, y, precision=jax.lax.Precision.HIGHEST))


def _pairs(similarity, labels, ref_labels=None):
  """Flattened pairs: (distance, positive, query label), self pairs out."""
  labels = np.asarray(labels)
  self_pairs = ref_labels is None
  ref_labels = labels if self_pairs else np.asarray(ref_labels)
  d = np.float32(1) - np.asarray(similarity, np.float32)
  keep = np.ones(d.shape, bool)
  if self_pairs:
    np.fill_diagonal(keep, False)
  positive = labels[:, None] == ref_labels[None, :]
  query = np.broadcast_to(labels[:, None], d.shape)
  return d[keep], positive[keep], query[keep]


def _edge_at_least(distance):
  """The smallest grid edge `k / G` with `distance <= k / G`, as `k`."""
  return int(np.ceil(np.float64(distance) * G))


def _first_edge_reaching(negatives, far):
  """Edge `k` of the first grid edge where the FAR reaches `far`."""
  negatives = np.sort(negatives)
  needed = max(1, math.ceil(round(far * len(negatives), 9)))
  return _edge_at_least(negatives[needed - 1])


def _rates_at_every_edge(d, positive):
  """FAR and FRR at every grid edge 0..LAST_EDGE, by comparison."""
  edges = np.arange(LAST_EDGE + 1) / G
  neg, pos = np.sort(d[~positive]), np.sort(d[positive])
  far = np.searchsorted(neg, edges, side='right') / len(neg)
  frr = 1 - np.searchsorted(pos, edges, side='right') / len(pos)
  return edges, far, frr


def _reference_eer(d, positive):
  """Where FAR - FRR, linear between consecutive grid edges (and from
  FAR 0, FRR 1 one edge below the first), crosses zero."""
  edges, far, frr = _rates_at_every_edge(d, positive)
  edges = np.concatenate([[-1 / G], edges])
  far, frr = np.concatenate([[0.0], far]), np.concatenate([[1.0], frr])
  gap = far - frr
  k = np.flatnonzero(gap >= 0)[0]
  share = 1.0 if gap[k] == 0 else -gap[k - 1] / (gap[k] - gap[k - 1])
  return (far[k - 1] + share * (far[k] - far[k - 1]),
          edges[k - 1] + share * (edges[k] - edges[k - 1]))


def _sklearn_eer(d, positive):
  """The EER of scikit-learn's ROC, linear between its points."""
  fpr, tpr, _ = sklearn_metrics.roc_curve(positive, -d,
                                          drop_intermediate=False)
  gap = fpr - (1 - tpr)
  k = np.flatnonzero(gap >= 0)[0]
  share = 1.0 if gap[k] == 0 else -gap[k - 1] / (gap[k] - gap[k - 1])
  return fpr[k - 1] + share * (fpr[k] - fpr[k - 1])


def _snapped(d):
  """Each distance moved up to its grid edge: the scores the grid sees."""
  return np.ceil(d.astype(np.float64) * G) / G


def _points(similarity, labels, ref_labels=None, **kwargs):
  source = advanced.source_from_similarity(similarity, labels, ref_labels)
  return advanced.operating_points_from_histograms(
      advanced.pair_histograms(source, product=kwargs.pop('product', None)),
      source.classes, **kwargs)


def _set(seed=0, num=300, dim=8, spread=1.0):
  sizes = np.random.default_rng(seed).integers(2, 25, size=40)
  sizes[:2] = 1  # two singleton classes
  sizes = sizes[np.cumsum(sizes) <= num]
  return clustered_set(seed, sizes, dim=dim, spread=spread)


def _check(points, similarity, labels, ref_labels=None, fars=None,
           target_far=1e-2, min_false_accepts=30):
  d, positive, query = _pairs(similarity, labels, ref_labels)
  neg, pos = d[~positive], d[positive]
  assert points.num_positive == len(pos)
  assert points.num_negative == len(neg)
  # The curves: exact rates at grid edges, at every edge a pair sits on.
  assert np.all(np.diff(points.thresholds) > 0)
  np.testing.assert_array_equal(
      points.thresholds * G, np.unique([_edge_at_least(x) for x in d]))
  np.testing.assert_array_equal(
      points.far, [np.mean(neg <= t) for t in points.thresholds])
  np.testing.assert_array_equal(
      points.tar, [np.mean(pos <= t) for t in points.thresholds])
  # TAR at each FAR.
  for point, far in zip(points.tar_at_far, fars or metrics_defaults()):
    assert point.target_far == far
    assert point.resolvable == (far * len(neg) >= min_false_accepts)
    if not point.resolvable:
      assert point.threshold is point.far is point.tar is None
      continue
    edge = _first_edge_reaching(neg, far) / G
    assert point.threshold == edge
    assert point.far == np.mean(neg <= edge) >= far
    assert point.tar == np.mean(pos <= edge)
  # EER and AUC: the reference on the grid, scikit-learn on the distances
  # moved to their grid edges (the same scores: equal), and on the raw ones.
  eer, eer_threshold = _reference_eer(d, positive)
  assert points.eer == pytest.approx(eer, abs=1e-12)
  assert points.eer_threshold == pytest.approx(eer_threshold, abs=1e-12)
  assert points.eer == pytest.approx(_sklearn_eer(_snapped(d), positive),
                                     abs=1e-12)
  assert points.auc == pytest.approx(
      sklearn_metrics.roc_auc_score(positive, -_snapped(d)), abs=1e-12)
  # Pairs a bin apart or less are the only ones the grid ties.
  assert points.auc == pytest.approx(
      sklearn_metrics.roc_auc_score(positive, -d), abs=2e-3)
  assert points.eer == pytest.approx(_sklearn_eer(d, positive), abs=5e-3)
  # The global threshold and each class's FAR and FRR there, and each
  # class's own threshold.
  calibration = points.calibration
  assert calibration.threshold == _first_edge_reaching(neg, target_far) / G
  classes = [c for c in np.unique(query)
             if np.any(positive & (query == c))
             and np.any(~positive & (query == c))]
  np.testing.assert_array_equal(points.classes, classes)
  for i, c in enumerate(classes):
    own_neg = d[(query == c) & ~positive]
    own_pos = d[(query == c) & positive]
    assert calibration.class_far[i] == np.mean(
        own_neg <= calibration.threshold)
    assert calibration.class_frr[i] == pytest.approx(
        np.mean(own_pos > calibration.threshold), abs=1e-12)
    assert points.class_threshold[i] == np.float32(
        _first_edge_reaching(own_neg, target_far) / G)
  assert points.class_threshold_spread['max'] == points.class_threshold.max()
  assert points.class_threshold_spread['std'] == pytest.approx(
      np.std(points.class_threshold))


def metrics_defaults():
  return (1e-4, 1e-3, 1e-2, 1e-1)


@pytest.mark.parametrize('product', ['numpy', 'jax'])
def test_a_set_with_singletons_equals_the_reference(product):
  z, labels = _set()
  similarity = _matrix(z)
  points = _points(similarity, labels, product=product)
  _check(points, similarity, labels)
  # Singleton classes: no positive pair, so not evaluated, but their
  # negatives count in the global FAR.
  assert len(points.classes) == len(np.unique(labels)) - 2
  assert [p.resolvable for p in points.tar_at_far] == [False, True, True,
                                                       True]


def test_queries_against_other_references():
  z, labels = _set(seed=1, num=340)
  queries, refs = z[:150], z[150:]
  similarity = _matrix(queries, refs)
  fars = (0.05, 0.002, 0.3)
  points = _points(similarity, labels[:150], labels[150:], fars=fars,
                   target_far=0.05, min_false_accepts=10)
  _check(points, similarity, labels[:150], labels[150:], fars=fars,
         target_far=0.05, min_false_accepts=10)


def test_ties_on_a_lattice():
  # Embeddings on a coarse lattice: many equal distances, within and across
  # classes, and pairs exactly on grid edges (distance 0, 0.5, 1, ...).
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 12, 260)
  z = rng.integers(-1, 2, size=(260, 3)).astype(np.float32)
  z[np.all(z == 0, axis=1)] = 1.0
  similarity = _matrix(z)
  points = _points(similarity, labels, fars=(0.01, 0.2))
  _check(points, similarity, labels, fars=(0.01, 0.2))
  assert len(points.thresholds) < 20  # few distinct distances


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), spread=st.floats(0.2, 3.0),
                  levels=st.sampled_from([None, 4, 32]))
def test_auc_and_eer_equal_scikit_learn(seed, spread, levels):
  # One shape for every example (one compilation): 12 classes of 10.
  z, labels = clustered_set(seed, [10] * 12, dim=4, spread=spread)
  similarity = _matrix(z)
  if levels:  # similarities on a coarse grid: ties
    similarity = np.round(similarity * levels) / levels
  points = _points(similarity, labels, fars=(0.1,))
  d, positive, _ = _pairs(similarity, labels)
  assert points.auc == pytest.approx(
      sklearn_metrics.roc_auc_score(positive, -_snapped(d)), abs=1e-12)
  assert points.eer == pytest.approx(_sklearn_eer(_snapped(d), positive),
                                     abs=1e-12)


def test_the_embeddings_function_equals_the_histograms():
  z, labels = _set(seed=3)
  points = metrics.operating_points(z, labels, target_far=0.05)
  source = advanced.source_from_embeddings(z, labels)
  again = advanced.operating_points_from_histograms(
      advanced.pair_histograms(source), source.classes, target_far=0.05)
  np.testing.assert_array_equal(points.tar, again.tar)
  assert points.to_dict() == again.to_dict()
  assert points.calibration.target_far == 0.05


def test_histograms_of_row_subsets_merge_to_the_whole():
  z, labels = _set(seed=4)
  similarity = _matrix(z)  # one product: the same similarity in every part
  whole = advanced.pair_histograms(
      advanced.source_from_similarity(similarity, labels))
  parts = [advanced.pair_histograms(advanced.source_from_similarity(
      similarity[rows], labels[rows], labels)) for rows in
           (slice(0, 100), slice(100, 180), slice(180, None))]
  merged = parts[2].merge(parts[0]).merge(parts[1])
  np.testing.assert_array_equal(merged.negative, whole.negative)
  # The subsets keep each query's pair with itself (it is also a
  # reference there), at distance 0 within rounding: bin 0 or 1.
  extra = merged.positive - whole.positive
  assert np.all(extra[:, 2:] == 0) and np.all(extra >= 0)
  np.testing.assert_array_equal(extra.sum(axis=1),
                                np.unique(labels, return_counts=True)[1])


def test_the_crossing_of_a_hand_made_curve():
  # One class pair at each distance: positives at 0.25, 0.5; negatives at
  # 0.5, 0.75 (bins 4096, 8192, 12288).
  histograms = _histograms.PairHistograms(
      positive=np.zeros((2, LAST_EDGE + 2), np.int32),
      negative=np.zeros((2, LAST_EDGE + 2), np.int32), cut_bin=LAST_EDGE)
  histograms.positive[0, 4096] = histograms.positive[1, 8192] = 1
  histograms.negative[0, 8192] = histograms.negative[1, 12288] = 1
  points = advanced.operating_points_from_histograms(
      histograms, np.array([7, 9]), fars=(0.5,), target_far=0.5,
      min_false_accepts=1)
  np.testing.assert_array_equal(points.thresholds, [0.25, 0.5, 0.75])
  np.testing.assert_array_equal(points.far, [0, 0.5, 1])
  np.testing.assert_array_equal(points.tar, [0.5, 1, 1])
  # FAR 0 -> 0.5 and FRR 0.5 -> 0 across the bin below 0.5: they meet at
  # 0.25, halfway.
  assert points.eer == 0.25
  assert points.eer_threshold == pytest.approx(0.5 - 0.5 / G)
  # 3 of the 4 positive-negative comparisons are won, 1 tied (both at 0.5).
  assert points.auc == 3.5 / 4
  (point,) = points.tar_at_far
  assert (point.threshold, point.far, point.tar) == (0.5, 0.5, 1.0)
  np.testing.assert_array_equal(points.classes, [7, 9])
  np.testing.assert_array_equal(points.class_threshold, [0.5, 0.75])


@pytest.mark.parametrize('fars, match', [
    ((0.0,), r'fars must be a false-accept rate in \(0, 1\], got 0.0'),
    ((1e-3, 1.5), r'got 1.5'),
    ((), 'at least one'),
    ((0.1, 0.1), 'distinct'),
    ('0.1', 'a sequence'),
])
def test_bad_target_fars_are_named(fars, match):
  z, labels = _set(seed=5, num=60)
  with pytest.raises((ValueError, TypeError), match=match):
    metrics.operating_points(z, labels, fars=fars)


def test_other_bad_arguments_are_named():
  z, labels = _set(seed=5, num=60)
  with pytest.raises(ValueError, match='target_far must be a false-accept'):
    metrics.operating_points(z, labels, target_far=-0.1)
  with pytest.raises(ValueError, match='min_false_accepts'):
    metrics.operating_points(z, labels, min_false_accepts=0)
  with pytest.raises(ValueError, match='product'):
    metrics.operating_points(z, labels, product='torch')
  with pytest.raises(ValueError, match='at least two classes'):
    metrics.operating_points(z[:6], np.zeros(6, int))


def test_histograms_with_a_cut_are_refused():
  z, labels = _set(seed=6, num=80)
  source = advanced.source_from_embeddings(z, labels)
  result = advanced.pair_histograms(source)
  cut = G // 2
  clipped = _histograms.PairHistograms(
      np.concatenate([result.positive[:, :cut + 1],
                      result.positive[:, cut + 1:].sum(1, keepdims=True)],
                     axis=1),
      np.concatenate([result.negative[:, :cut + 1],
                      result.negative[:, cut + 1:].sum(1, keepdims=True)],
                     axis=1), cut)
  with pytest.raises(_histograms.BeyondCutError, match='past the histograms'):
    advanced.operating_points_from_histograms(clipped)


def test_kept_histograms_serve_the_metrics_the_figure_and_the_points():
  from tcm_jax import report  # pylint: disable=import-outside-toplevel
  z, labels = _set(seed=7)
  kept = metrics.evaluate_embeddings(z, labels, engine='histogram',
                                     keep_histograms=True)
  cut = metrics.evaluate_embeddings(z, labels, engine='histogram')
  assert cut.histograms is None
  assert kept.opis == cut.opis and kept.eps_opis == cut.eps_opis
  np.testing.assert_array_equal(kept.curves.utility, cut.curves.utility)
  source = advanced.source_from_embeddings(z, labels)
  again = advanced.pair_histograms(source)
  assert kept.histograms.cut_bin == LAST_EDGE
  np.testing.assert_array_equal(kept.histograms.positive, again.positive)
  np.testing.assert_array_equal(kept.histograms.negative, again.negative)
  # The figure's curves off the histograms: exact counts at grid edges
  # within half a bin of the figure's thresholds.
  wide = report.plot_curves(kept, z, labels)
  wanted = np.linspace(0, 2, report.PLOT_THRESHOLDS)
  assert np.max(np.abs(wide.thresholds - wanted)) <= 0.5 / G
  np.testing.assert_array_equal(wide.thresholds * G,
                                np.round(wide.thresholds * G))
  counts = advanced.class_counts(source, wide.thresholds, 1.0)
  mask = np.isin(source.classes, kept.curves.classes)
  np.testing.assert_array_equal(
      wide.tpr, counts.pos_accepted[mask] / counts.pos_total[mask][:, None])
  with pytest.raises(ValueError, match="keep_histograms=True needs "
                     "engine='histogram'"):
    metrics.evaluate_embeddings(z, labels, keep_histograms=True)
