"""A mergeable accumulator of every threshold metric, for evaluation loops.

The convention of CLU's and metrax's metrics: an empty state; `update` with a
block of query embeddings and labels against given references; `merge` of
two states (blocks, devices, hosts, in any order); `compute` of the metrics.
The state is the exact per-class histograms of pair distances of the
one-pass engine, without a cut (every pair), kept per query class label, so
states of different label sets merge by label. `compute` reads off them
everything threshold-based: OPIS, eps-OPIS and the utility curves over the
calibration range, the global threshold with each class's FAR and FRR, and
the operating points (TAR at FARs, EER, ROC AUC). It equals the one-call
functions on all the blocks' queries at once against the same references
(`evaluate_embeddings(..., engine='histogram')`, `operating_points`): the
counts exactly. Retrieval metrics (Recall@K, MAP@R) are not accumulated:
they need each query's ranking, not its histogram. A block given without
references is compared with itself (its pairs within it), so leave-one-out
over a set split into blocks is not a sum of blocks: give the whole set as
one block, or the blocks against a separate gallery.

Memory: `2 x classes x 33,026` int64 counters (0.5 MiB a class). States are
values, as in CLU: each `update` or `merge` copies the larger state once and
adds the rows of the other's classes (a block's rows are those of its query
classes only), so a step costs a copy of the state, about 0.5 GB of memory
traffic for a gallery of 1,000 classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tcm_jax.metrics import _evaluation
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _operating_points
from tcm_jax.metrics import _opis
from tcm_jax.metrics import _pair_counts

_BINS = _histograms.LAST_BIN + 2


@dataclasses.dataclass(frozen=True)
class AccumulatedMetrics:
  """What `PairAccumulator.compute` gives.

  Attributes:
    curves: per-class utility curves over the calibration range.
    opis: OPIS over it.
    eps_opis: eps-OPIS.
    operating_points: TAR at FARs, EER, ROC AUC, the curves, the global
      threshold at `target_far` with each class's FAR and FRR, and each
      class's own threshold.
  """
  curves: _opis.UtilityCurves
  opis: float
  eps_opis: float
  operating_points: _operating_points.OperatingPoints


@dataclasses.dataclass(frozen=True)
class PairAccumulator:
  """Per-class pair histograms, summed over blocks of queries.

  Attributes:
    classes: `[C]` the class labels of the queries seen, increasing.
    positive: `[C, 33026]` int64 positive pairs by distance bin.
    negative: `[C, 33026]` int64 negative pairs by distance bin.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import PairAccumulator
    >>> rng = np.random.default_rng(0)
    >>> gallery_labels = np.repeat(np.arange(10), 20)
    >>> centres = rng.normal(size=(10, 16))
    >>> gallery = centres[gallery_labels] + rng.normal(size=(200, 16))
    >>> state = PairAccumulator.empty()
    >>> for step in range(4):  # 4 batches of 25 queries from a model
    ...   labels = rng.integers(0, 10, 25)
    ...   queries = centres[labels] + rng.normal(size=(25, 16))
    ...   state = state.update(queries, labels, gallery, gallery_labels)
    >>> result = state.compute(fars=(1e-2, 1e-1))
    >>> int(state.negative.sum())  # 100 queries x 180 other-class references
    18000
    >>> 0 <= result.opis <= 0.25, result.operating_points.auc > 0.5
    (True, True)
  """
  classes: np.ndarray
  positive: np.ndarray
  negative: np.ndarray

  @classmethod
  def empty(cls) -> PairAccumulator:
    """The state of no pair."""
    return cls(np.zeros(0, np.int64), np.zeros((0, _BINS), np.int64),
               np.zeros((0, _BINS), np.int64))

  def update(self, embeddings, labels, ref_embeddings=None, ref_labels=None,
             *, product: str | None = None) -> PairAccumulator:
    """This state plus the pairs of a block of queries.

    Args:
      embeddings: `[b, dim]` the block's query embeddings.
      labels: `[b]` their integer class ids.
      ref_embeddings: `[M, dim]` the references they are compared with;
        default: the block itself, leave-one-out (the pairs within the
        block only).
      ref_labels: `[M]` the references' class ids.
      product: `'numpy'` or `'jax'` (see `evaluate_embeddings`).

    Returns:
      A new state; this one is unchanged.
    """
    source = _pair_counts.source_from_embeddings(embeddings, labels,
                                                 ref_embeddings, ref_labels)
    block = _operating_points.pair_histograms(source, product=product)
    rows = np.bincount(source.query_ids, minlength=source.num_classes) > 0
    return self.merge(PairAccumulator(
        np.asarray(source.classes[rows], np.int64),
        block.positive[rows].astype(np.int64),
        block.negative[rows].astype(np.int64)))

  def merge(self, other: PairAccumulator) -> PairAccumulator:
    """The state of both states' pairs (disjoint sets of query rows)."""
    if not isinstance(other, PairAccumulator):
      raise TypeError('merge takes another PairAccumulator, got '
                      f'{type(other).__name__}.')
    if np.isin(self.classes, other.classes).all():
      self, other = other, self  # pylint: disable=self-cls-assignment
    classes = np.union1d(self.classes, other.classes)
    if len(classes) == len(self.classes):  # one copy of the larger state
      positive, negative = self.positive.copy(), self.negative.copy()
    else:
      positive = np.zeros((len(classes), _BINS), np.int64)
      negative = np.zeros((len(classes), _BINS), np.int64)
      rows = np.searchsorted(classes, self.classes)
      positive[rows], negative[rows] = self.positive, self.negative
    rows = np.searchsorted(classes, other.classes)
    positive[rows] += other.positive
    negative[rows] += other.negative
    return PairAccumulator(classes, positive, negative)

  def histograms(self) -> _histograms.PairHistograms:
    """The state as `PairHistograms` (rows: `classes`), without a cut."""
    return _histograms.PairHistograms(self.positive, self.negative,
                                      _histograms.LAST_BIN)

  def compute(self, *, far_range=(1e-3, 1e-1), num_thresholds: int = 101,
              beta: float = 1.0, epsilon: float = 0.1,
              target_far: float = 1e-2,
              fars: Sequence[float] = _operating_points.DEFAULT_FARS,
              min_false_accepts: int = _operating_points.MIN_FALSE_ACCEPTS
              ) -> AccumulatedMetrics:
    """Every threshold metric of the pairs accumulated.

    Args:
      far_range: the calibration range's global FARs.
      num_thresholds: thresholds over it (on the 2**-14 grid).
      beta: the F-beta weight of the utility.
      epsilon: the worst-class fraction of eps-OPIS.
      target_far: the FAR of the global threshold.
      fars: the target FARs of the operating points.
      min_false_accepts: the resolvability rule of `operating_points`.

    Returns:
      `AccumulatedMetrics`.

    Raises:
      ValueError: fewer than two classes with a positive and a negative
        pair, or a bad argument (named).
    """
    _evaluation.check_options(far_range=far_range, beta=beta,
                              num_thresholds=num_thresholds, epsilon=epsilon,
                              target_far=target_far, engine='histogram')
    histograms = self.histograms()
    points = _operating_points.operating_points_from_histograms(
        histograms, self.classes, fars=fars, target_far=target_far,
        min_false_accepts=min_false_accepts)
    counts, calibration_range = _histograms.counts_at_edges(
        histograms, far_range, None, num_thresholds, target_far)
    mask = np.isin(self.classes, points.classes)
    curves = _opis.curves_from_counts(counts, mask, self.classes, beta,
                                      calibration_range, compiled=True)
    return AccumulatedMetrics(
        curves=curves, opis=float(_opis.compiled_opis(curves.utility)),
        eps_opis=float(_opis.compiled_eps_opis(curves.utility,
                                                epsilon=epsilon)),
        operating_points=points)
