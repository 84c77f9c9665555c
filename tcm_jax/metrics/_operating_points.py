"""Verification operating points over all pairs, from per-class histograms.

A verification system accepts a pair when its distance is at most one global
threshold `t`. Over every pair of an evaluation set (ordered, as everywhere in
`tcm_jax.metrics`), the global false-accept rate `FAR(t)` is the fraction of
negative pairs accepted and the true-accept rate `TAR(t)` (`1 - FRR(t)`) the
fraction of positive pairs accepted. Everything here is read off the exact
per-class histograms of the one-pass engine (`PairHistograms`, bins of 2**-14
in distance), so every rate is exact at the grid edges where it is read:

- the curves: `FAR` and `TAR` at every grid edge where either changes (the
  ROC and DET curves);
- TAR at a FAR: the threshold is the first grid edge at which the global FAR
  reaches the target (the one-pass engine's global threshold; the FAR
  reached is at least the target, above it only by the negatives of the
  last bin, and is reported), and the TAR there. A target is resolvable only
  when the set has at least `min_false_accepts` negative pairs within it
  (`target * negatives >= min_false_accepts`, default 30, after Doddington's
  "rule of 30": 30 independent errors put the observed rate within about 30%
  of the true one with 90% confidence). Pairs are counted as everywhere
  here, ordered: with the queries as references each pair counts twice, so
  30 are 15 distinct pairs (pass `min_false_accepts=60` for the rule's
  guarantee there);
- the equal error rate: where the FAR and FRR curves, linear between
  consecutive grid edges, cross;
- ROC AUC: the area under the TAR-against-FAR curve through every grid edge,
  which is the probability that a positive pair is nearer than a negative
  one, pairs in the same bin counting one half;
- per class: its FAR and FRR at the global threshold, and its own threshold,
  the first grid edge at which the class's own FAR reaches the target (no
  resolvability rule per class: a small class's own threshold is coarse,
  and the spread's min and max come from such classes first).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _evaluation
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _one_pass
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _retrieval
from tcm_jax.metrics import _threshold

DEFAULT_FARS = (1e-4, 1e-3, 1e-2, 1e-1)
MIN_FALSE_ACCEPTS = 30


@dataclasses.dataclass(frozen=True)
class TarAtFar:
  """The true-accept rate at one target FAR.

  Attributes:
    target_far: the global FAR asked for.
    resolvable: whether the set has `min_false_accepts` negative pairs
      within the target; when not, the other fields are None.
    threshold: the first grid edge (a distance) at which the global FAR
      reaches `target_far`.
    far: the exact global FAR there (at least `target_far`).
    tar: the exact global TAR there (`1 - FRR`).
  """
  target_far: float
  resolvable: bool
  threshold: float | None
  far: float | None
  tar: float | None


@dataclasses.dataclass(frozen=True)
class OperatingPoints:
  """Where one global threshold can operate, over all pairs of a set.

  Attributes:
    thresholds: `[K]` float32 grid edges (distances) at which the global
      counts change, increasing: the points of the curves. Below the first,
      nothing is accepted.
    far: `[K]` exact global FAR at each threshold.
    tar: `[K]` exact global TAR (`1 - FRR`) at each threshold.
    tar_at_far: one `TarAtFar` per target FAR asked for, in the order given.
    eer: the equal error rate.
    eer_threshold: the distance at which it is reached (between two grid
      edges, linearly).
    auc: the ROC AUC.
    num_positive: positive pairs (ordered).
    num_negative: negative pairs (ordered).
    min_false_accepts: the resolvability rule of `tar_at_far`.
    calibration: the global threshold at `calibration.target_far` and each
      evaluated class's FAR and FRR there.
    classes: `[T]` labels of the evaluated classes (a positive and a
      negative pair each).
    class_threshold: `[T]` each evaluated class's own threshold: the first
      grid edge at which its own FAR reaches `calibration.target_far`.
    class_threshold_spread: `{'min', 'max', 'std'}` of `class_threshold`.
  """
  thresholds: np.ndarray
  far: np.ndarray
  tar: np.ndarray
  tar_at_far: tuple[TarAtFar, ...]
  eer: float
  eer_threshold: float
  auc: float
  num_positive: int
  num_negative: int
  min_false_accepts: int
  calibration: _threshold.ThresholdCalibration
  classes: np.ndarray
  class_threshold: np.ndarray
  class_threshold_spread: dict[str, float]

  @property
  def frr(self) -> np.ndarray:
    """`[K]` global FRR (`1 - tar`) at each threshold: the DET curve's
    other axis."""
    return 1.0 - self.tar

  def to_dict(self) -> dict[str, Any]:
    """The scalar results as JSON-ready Python values (not the curves)."""
    return {
        'tar_at_far': [dataclasses.asdict(point)
                       for point in self.tar_at_far],
        'eer': self.eer,
        'eer_threshold': self.eer_threshold,
        'auc': self.auc,
        'num_positive': self.num_positive,
        'num_negative': self.num_negative,
        'min_false_accepts': self.min_false_accepts,
        'class_threshold': self.class_threshold_spread,
    }


def resolvable(target: float, negatives: int, min_false_accepts: int) -> bool:
  """Whether `negatives` pairs resolve a target FAR: `target * negatives >=
  min_false_accepts`, a product within float rounding of it counting as
  equal (3e-4 * 100,000 is 29.999999999999996)."""
  return target * negatives * (1 + 1e-12) >= min_false_accepts


def check_fars(fars: Sequence[float], name: str = 'fars'
               ) -> tuple[float, ...]:
  """Target FARs: a non-empty sequence (or 1-D array) of distinct rates in
  (0, 1]."""
  if isinstance(fars, np.ndarray) and fars.ndim == 1:
    fars = fars.tolist()
  if isinstance(fars, (str, bytes)) or not isinstance(fars, Sequence):
    raise TypeError(f'{name} must be a sequence of false-accept rates, got '
                    f'{fars!r}.')
  checked = tuple(_checks.check_far(name, far) for far in fars)
  if not checked or len(set(checked)) != len(checked):
    raise ValueError(f'{name} must be distinct false-accept rates, at least '
                     f'one, got {tuple(fars)}.')
  return checked


def class_mask(histograms: _histograms.PairHistograms,
               name: str = 'the evaluation set') -> np.ndarray:
  """`[classes]` the rows with a positive and a negative pair (at least
  two, else ValueError)."""
  mask = (histograms.positive.sum(axis=1) > 0) & (
      histograms.negative.sum(axis=1) > 0)
  if mask.sum() < 2:
    raise ValueError(
        f'{name} needs at least two classes with at least two samples (a '
        f'positive and a negative pair each), got {int(mask.sum())}.')
  return mask


def measure_at_edge(histograms: _histograms.PairHistograms, edge: int,
                    target_far: float,
                    mask: np.ndarray) -> _threshold.ThresholdCalibration:
  """The global and per-class FAR and FRR of `histograms` at grid edge
  `edge`, as a `ThresholdCalibration` for `target_far` over the classes of
  `mask`."""
  counts = _histograms.class_counts_at(histograms, np.zeros(0, np.int64),
                                       edge)
  return _threshold.calibrate(counts, target_far, mask)


def global_counts(histograms: _histograms.PairHistograms
                   ) -> tuple[np.ndarray, np.ndarray]:
  """`([bins], [bins])` every positive and negative pair by grid bin, with
  none past the cut (else `BeyondCutError`)."""
  positive = histograms.positive.sum(axis=0, dtype=np.int64)
  negative = histograms.global_negatives()
  if positive[-1] or negative[-1]:
    raise _histograms.BeyondCutError(
        f'{int(positive[-1])} positive and {int(negative[-1])} negative '
        f"pairs lie past the histograms' cut at distance "
        f'{histograms.cut:.6f}: the curves, the EER and the AUC need every '
        'pair (histograms without a cut, as operating_points makes).')
  return positive[:-1], negative[:-1]


def equal_error_rate(far: np.ndarray, frr: np.ndarray,
                     edges: np.ndarray) -> tuple[float, float]:
  """`(eer, threshold)` where the FAR and FRR curves cross.

  Args:
    far: `[K]` FAR at the grid edges where the counts change, non-decreasing,
      ending at 1.
    frr: `[K]` FRR there, non-increasing, ending at 0.
    edges: `[K]` those grid edges (ints), increasing.

  Between two such edges the rates hold still; they step at each edge `k`
  from their values at edge `k - 1`. Both are taken linear across that one
  bin, starting from FAR 0 and FRR 1 before the first edge; the EER is the
  rate where they cross, the threshold the distance.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _operating_points
    >>> eer, t = _operating_points.equal_error_rate(
    ...     np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.25, 0.0]),
    ...     np.array([2, 4, 6]))
    >>> print(f'{eer:.4f} at {t * 2**14:.4f}')  # across the bin of edge 4
    0.3333 at 3.6667
  """
  far = np.concatenate([[0.0], far])
  frr = np.concatenate([[1.0], frr])
  gap = far - frr  # -1 at the start, 1 at the end, non-decreasing
  k = int(np.argmax(gap >= 0))
  share = 1.0 if gap[k] == 0 else -gap[k - 1] / (gap[k] - gap[k - 1])
  eer = far[k - 1] + share * (far[k] - far[k - 1])
  threshold = (edges[k - 1] - 1 + share) / _histograms.BINS_PER_UNIT
  return float(eer), float(threshold)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
  """ROC AUC of pair counts by bin: `P(d_pos < d_neg)`, ties counting one
  half, which is the trapezoidal area under TAR against FAR.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _operating_points
    >>> _operating_points.roc_auc(np.array([2, 0, 0]), np.array([0, 1, 1]))
    1.0
    >>> _operating_points.roc_auc(np.array([1, 1]), np.array([1, 1]))
    0.5
  """
  positive = positive.astype(np.float64)
  nearer = np.cumsum(positive) - positive  # positives in earlier bins
  wins = np.dot(negative.astype(np.float64), nearer + positive / 2)
  return float(wins / (positive.sum() * negative.sum()))


def _tar_at_far(negative, pos_cumsum, targets,
                min_false_accepts) -> tuple[TarAtFar, ...]:
  num_negative = int(negative.sum())
  num_positive = max(int(pos_cumsum[-1]), 1)
  points = []
  for target in targets:
    if not resolvable(target, num_negative, min_false_accepts):
      points.append(TarAtFar(target, False, None, None, None))
      continue
    edge = _threshold.quantile_bin(negative, target)
    points.append(TarAtFar(
        target_far=target, resolvable=True,
        threshold=edge / _histograms.BINS_PER_UNIT,
        far=float(negative[:edge + 1].sum() / num_negative),
        tar=float(pos_cumsum[edge] / num_positive)))
  return tuple(points)


def class_thresholds(negative: np.ndarray, rows: np.ndarray,
                     target_far: float) -> np.ndarray:
  """`[len(rows)]` int64: each row's (of `negative`, by index) first grid
  edge at which its own FAR reaches `target_far` (rows with a negative)."""
  out = np.empty(len(rows), np.int64)
  for first in range(0, len(rows), 256):  # [256, bins] at a time
    counts = negative[rows[first:first + 256]].astype(np.int64)
    needed = np.maximum(1, np.ceil(target_far * counts.sum(axis=1)
                                   * (1 - 1e-12)))
    np.cumsum(counts, axis=1, out=counts)
    out[first:first + 256] = np.sum(counts < needed[:, None], axis=1)
  return out


def operating_points_from_histograms(histograms: _histograms.PairHistograms,
                                     classes: np.ndarray | None = None, *,
                                     fars: Sequence[float] = DEFAULT_FARS,
                                     target_far: float = 1e-2,
                                     min_false_accepts: int = (
                                         MIN_FALSE_ACCEPTS)
                                     ) -> OperatingPoints:
  """The operating points of histograms that hold every pair (no cut).

  `operating_points` is this function of `pair_histograms` of its source;
  call it yourself on histograms merged across sets of query rows (hosts,
  devices, shards of a large set).

  Args:
    histograms: per-class histograms with no pair past their cut (those of
      `pair_histograms`, or of several sets of query rows merged). The
      evaluated classes are the rows with a positive and a negative pair.
    classes: `[classes]` the labels of the rows (default: their indices).
    fars: the target FARs of `tar_at_far`.
    target_far: the FAR of the global and of each class's own threshold.
    min_false_accepts: negative pairs a target FAR must hold to be resolved.

  Returns:
    `OperatingPoints`.

  Raises:
    BeyondCutError: pairs past the histograms' cut.
    ValueError: fewer than two classes with a positive and a negative pair.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(8), 6)
    >>> z = rng.normal(size=(8, 16))[labels] + rng.normal(size=(48, 16))
    >>> first = advanced.source_from_embeddings(z[:24], labels[:24], z, labels)
    >>> second = advanced.source_from_embeddings(z[24:], labels[24:], z,
    ...                                          labels)
    >>> merged = advanced.pair_histograms(first).merge(
    ...     advanced.pair_histograms(second))
    >>> points = advanced.operating_points_from_histograms(merged, fars=(0.1,))
    >>> points.num_negative == 48 * 42  # every pair, both orders
    True
  """
  fars = check_fars(fars)
  target_far = _checks.check_far('target_far', target_far)
  min_false_accepts = _checks.check_int('min_false_accepts',
                                        min_false_accepts, 1)
  positive, negative = global_counts(histograms)
  mask = class_mask(histograms)
  if classes is not None and len(classes) != len(mask):
    raise ValueError(
        f'classes must label the histograms\' {len(mask)} rows, got '
        f'{len(classes)} labels.')
  pos_cumsum, neg_cumsum = np.cumsum(positive), np.cumsum(negative)
  num_positive, num_negative = int(pos_cumsum[-1]), int(neg_cumsum[-1])
  changes = np.flatnonzero((positive > 0) | (negative > 0))
  far = neg_cumsum[changes] / num_negative
  tar = pos_cumsum[changes] / num_positive
  edges = _histograms.edge_distances(changes)
  eer, eer_threshold = equal_error_rate(far, 1.0 - tar, changes)

  own = _histograms.edge_distances(
      class_thresholds(histograms.negative, np.flatnonzero(mask),
                       target_far))
  return OperatingPoints(
      thresholds=edges, far=far, tar=tar,
      tar_at_far=_tar_at_far(negative, pos_cumsum, fars, min_false_accepts),
      eer=eer, eer_threshold=eer_threshold,
      auc=roc_auc(positive, negative),
      num_positive=num_positive, num_negative=num_negative,
      min_false_accepts=min_false_accepts,
      calibration=measure_at_edge(histograms,
                                  histograms.far_edge(target_far),
                                  target_far, mask),
      classes=(np.arange(len(mask)) if classes is None
               else np.asarray(classes))[mask],
      class_threshold=own, class_threshold_spread={
          'min': float(own.min()), 'max': float(own.max()),
          'std': float(np.std(own))})


def histogram_bytes(source: _pair_counts.PairSource) -> int:
  """The memory of `pair_histograms(source)`."""
  return (2 * source.num_classes * (_histograms.LAST_BIN + 2)
          * np.dtype(_one_pass.count_dtype(source)).itemsize)


def fits(source: _pair_counts.PairSource) -> bool:
  """Whether `pair_histograms(source)` is within the engine's memory limit
  (4 GiB: about 16,000 classes).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> z = np.eye(4) + 0.1
    >>> advanced.histograms_fit(advanced.source_from_embeddings(z, [0, 0, 1, 1]))
    True
  """
  return histogram_bytes(source) <= _one_pass.MAX_HISTOGRAM_BYTES


def pair_histograms(source: _pair_counts.PairSource, *,
                    product: str | None = None,
                    progress: _pair_counts.ProgressFn | None = None
                    ) -> _histograms.PairHistograms:
  """Every pair of a source in per-class histograms, without a cut: one
  pass of the one-pass engine (`product`: `'numpy'` or `'jax'`, see
  `evaluate_source`).

  Raises:
    ValueError: histograms that would not fit in memory (classes x 33,026
      bins x 2 counters over 4 GiB).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> z = np.float32([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
    >>> histograms = advanced.pair_histograms(
    ...     advanced.source_from_embeddings(z, [0, 0, 1, 1]))
    >>> histograms.positive.shape  # two classes, every grid bin and one more
    (2, 33026)
    >>> int(histograms.negative.sum()), int(histograms.negative[:, -1].sum())
    (8, 0)
  """
  _evaluation.check_options(product=product)
  product = product or _evaluation.default_product()
  if not fits(source):
    raise ValueError(
        f'the histograms of every pair of {source.num_classes} classes need '
        f'{histogram_bytes(source) / 2**30:.1f} GiB (over '
        f'{_one_pass.MAX_HISTOGRAM_BYTES / 2**30:g} GiB): evaluate the '
        'operating points of fewer classes at a time (e.g. a PairAccumulator '
        'over query batches of a few classes), or leave them out (fars=(), '
        'eval.fars=(), --fars=).')
  run = _one_pass.numpy_pass if product == 'numpy' else _one_pass.jax_pass
  return run(source, _retrieval.plan(source, (1,)), _histograms.LAST_BIN,
             progress).histograms


def operating_points(embeddings, labels, ref_embeddings=None,
                     ref_labels=None, *,
                     fars: Sequence[float] = DEFAULT_FARS,
                     target_far: float = 1e-2,
                     min_false_accepts: int = MIN_FALSE_ACCEPTS,
                     product: str | None = None,
                     progress: _pair_counts.ProgressFn | None = None
                     ) -> OperatingPoints:
  """Verification operating points of an evaluation set, over all pairs.

  One pass over the pairs (streamed, never the `[N, N]` matrix) into
  per-class distance histograms on a grid of 2**-14, read off exactly at
  its edges (see `docs/definitions.md`): the global FAR and TAR curves,
  TAR at each of `fars` (those the set resolves), the EER, the ROC AUC,
  the global threshold at `target_far` with each class's FAR and FRR there,
  and each class's own threshold at `target_far`.

  Args:
    embeddings: `[N, dim]` embeddings (compared by cosine).
    labels: `[N]` integer class ids.
    ref_embeddings: optional `[M, dim]` references; default: the queries,
      each against all the others.
    ref_labels: `[M]` class ids of `ref_embeddings`.
    fars: target FARs of `tar_at_far`, each in (0, 1].
    target_far: the FAR of the global threshold and of each class's own.
    min_false_accepts: a target FAR is resolved only when the set has this
      many negative pairs within it (default 30).
    product: `'numpy'` or `'jax'` (default: NumPy on CPU, the device
      elsewhere).
    progress: `fn(done, total)` after each block.

  Returns:
    `OperatingPoints`.

  Raises:
    ValueError: bad embeddings or labels (as `evaluate_embeddings`), fewer
      than two classes with two samples, a FAR outside (0, 1].

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(20), 10)
    >>> z = rng.normal(size=(20, 16))[labels] + rng.normal(size=(200, 16))
    >>> points = metrics.operating_points(z, labels)
    >>> [p.resolvable for p in points.tar_at_far]  # 38,000 negative pairs
    [False, True, True, True]
    >>> 0.5 < points.auc <= 1, 0 <= points.eer < 0.5
    (True, True)
  """
  fars = check_fars(fars)
  _checks.check_far('target_far', target_far)
  _checks.check_int('min_false_accepts', min_false_accepts, 1)
  source = _pair_counts.source_from_embeddings(embeddings, labels,
                                               ref_embeddings, ref_labels)
  _pair_counts.check_enough_classes(source)
  histograms = pair_histograms(source, product=product, progress=progress)
  return operating_points_from_histograms(histograms, source.classes, fars=fars,
                                          target_far=target_far,
                                          min_false_accepts=min_false_accepts)
