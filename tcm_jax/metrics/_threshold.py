"""Calibration range and the one global threshold, as practitioners use them.

The global false-accept rate at distance threshold `t` is the fraction of all
negative pairs (ordered, different classes) with `d <= t`. Its inverse,
`far_quantile(f)`, is the project's convention for "the threshold at which
the global FAR equals f": the smallest `t` with `FAR(t) >= f`, i.e. the
`ceil(f * n_neg)`-th smallest negative distance. It is read from a histogram
of the negative distances with bins 2**-14 wide (the bin's midpoint), so it is
within 3.1e-5 of the exact order statistic; the FAR actually reached at the
threshold is then counted exactly and reported.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _pair_counts


@dataclasses.dataclass(frozen=True)
class CalibrationRange:
  """The operating range of thresholds, in distance and in global FAR.

  Attributes:
    distance: `(t_lo, t_hi)` distance thresholds.
    far: `(far_lo, far_hi)` that defined them; None for an explicit distance
      range.
  """
  distance: tuple[float, float]
  far: tuple[float, float] | None


@dataclasses.dataclass(frozen=True)
class ThresholdCalibration:
  """One global threshold, and what it means for each class.

  Attributes:
    target_far: the global FAR asked for.
    threshold: the distance threshold `far_quantile(target_far)`.
    far: exact global FAR at the threshold (all negative pairs).
    frr: exact global false-reject rate at the threshold (all positive
      pairs).
    class_far: `[classes]` each evaluated class's FAR at the threshold.
    class_frr: `[classes]` each evaluated class's FRR at the threshold.
    far_spread: worst (highest), best (lowest) and standard deviation of
      `class_far`.
    frr_spread: the same for `class_frr`.
    calibration_far: where the threshold was chosen on another set (a
      calibration transfer), the FAR it reached there; None when it was
      chosen on this set.
  """
  target_far: float
  threshold: float
  far: float
  frr: float
  class_far: np.ndarray
  class_frr: np.ndarray
  far_spread: dict[str, float]
  frr_spread: dict[str, float]
  calibration_far: float | None = None


class CalibrationRangeError(ValueError):
  """The negative pairs' distances are so concentrated that the calibration
  range (the distances between two false-accept rates) is empty: the
  embedding has collapsed (its message says how many negative pairs share
  one distance). Look at the model first; pass `distance_range` explicitly
  to measure a collapsed embedding anyway.

  Embeddings of any scale and similarities in [-1, 1] never reach it
  otherwise: rows are compared by cosine whatever their magnitude, and a
  similarity beyond [-1, 1] (dot products of unnormalised embeddings) is
  refused as such."""


def far_quantile(negative_histogram: np.ndarray, far: float) -> float:
  """Distance threshold at which the global FAR reaches `far`.

  Args:
    negative_histogram: `[_pair_counts.FINE_BINS]` counts of the negative-pair
      distances (see `_pair_counts.negative_histogram`).
    far: the false-accept rate, in (0, 1].

  Returns:
    The midpoint of the fine bin holding the `ceil(far * n)`-th smallest
    negative distance: within 3.1e-5 of it.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _pair_counts, _threshold
    >>> hist = np.zeros(_pair_counts.FINE_BINS, np.int64)
    >>> hist[[8192, 16384]] = 10  # ten negatives at d = 0.5, ten at d = 1.0
    >>> print(f'{_threshold.far_quantile(hist, 0.5):.4f}')
    0.5000
    >>> print(f'{_threshold.far_quantile(hist, 0.51):.4f}')
    1.0000
  """
  index = quantile_bin(negative_histogram, far)
  return (index + 0.5) / _pair_counts.FINE_BINS_PER_UNIT


def quantile_bin(negative_histogram: np.ndarray, far: float) -> int:
  """The bin of a histogram of negative distances that holds the
  `ceil(far * n)`-th smallest one."""
  total = int(negative_histogram.sum())
  if total == 0:
    raise ValueError('the evaluation set has no negative pair (one class).')
  # ceil(far * n), reading a product within float rounding of an integer
  # (0.1 * 1000 is 100.00000000000001) as that integer.
  far = _checks.check_far('far', far)
  needed = max(1, math.ceil(far * total * (1 - 1e-12)))
  return int(np.searchsorted(np.cumsum(negative_histogram), needed))


def _rounding_unit(low: float, high: float) -> float:
  return float(np.spacing(np.float32(max(abs(low), abs(high)))))


def max_thresholds(low: float, high: float) -> int:
  """The most evenly spaced float32 thresholds from `low` to `high`, ends
  included, at least 4 float32 rounding units apart (0 when not even 2).

  Examples:
    >>> from tcm_jax.metrics import _threshold
    >>> _threshold.max_thresholds(0.0, 2.0)  # any range of distances
    2097153
  """
  spacing = 4 * _rounding_unit(low, high)
  count = int(math.floor((high - low) / spacing)) + 1
  while count >= 2 and (high - low) / (count - 1) < spacing:
    count -= 1  # the division above rounded up
  return count if count >= 2 else 0


def check_num_thresholds(num: int, low: float, high: float,
                         range_name: str = 'the range',
                         widen: str | None = None) -> int:
  """`num` thresholds fit in `(low, high)` at least 4 rounding units apart.

  Args:
    num: the number of thresholds asked for (`num_thresholds`).
    low: the range's lower end.
    high: its upper end.
    range_name: what the range is, for the message.
    widen: the argument that would widen the range, for the message.

  Returns:
    `num`, as an int.
  """
  num = _checks.check_int('num_thresholds', num, 2)
  limit = max_thresholds(low, high)
  spacing = 4 * _rounding_unit(low, high)
  why = (f'at least 4 float32 rounding units ({spacing:.2g}) apart, so that '
         'they are distinct and the pair counts at them exact')
  advice = f', or a wider {widen}' if widen else ''
  if limit < 2:
    raise ValueError(
        f'{range_name} ({low:.6g}, {high:.6g}) is too narrow for 2 thresholds '
        f'{why}; widen it{advice.replace(", or", " with")}.')
  if num > limit:
    raise ValueError(
        f'num_thresholds={num} is more than the {limit} thresholds '
        f'{range_name} ({low:.6g}, {high:.6g}) holds {why}: use '
        f'num_thresholds <= {limit}{advice}.')
  return num


def check_num_thresholds_before(num: int, distance_range) -> int:
  """`num_thresholds` checked against the range before any pass: the
  explicit `distance_range`, or [0, 2] (every distance) when the range is
  still to be read off the FAR."""
  if distance_range is not None:
    low, high = (float(v) for v in distance_range)
    return check_num_thresholds(num, low, high, 'distance_range',
                                'distance_range')
  return check_num_thresholds(num, 0.0, 2.0, 'the whole distance range')


def thresholds_between(low: float, high: float, num: int, *,
                       range_name: str = 'the range',
                       widen: str | None = None) -> np.ndarray:
  """`num` evenly spaced float32 distance thresholds, both ends included.

  The spacing must be at least 4 float32 rounding units, so that thresholds
  are distinct and the pair counts at them are exact (`range_name` and
  `widen` word the error: see `check_num_thresholds`).

  Examples:
    >>> from tcm_jax.metrics import advanced
    >>> advanced.thresholds_between(0.2, 0.4, 3)
    array([0.2, 0.3, 0.4], dtype=float32)
  """
  num = check_num_thresholds(num, low, high, range_name, widen)
  return np.linspace(low, high, num, dtype=np.float32)


def range_thresholds(calibration_range: CalibrationRange,
                     num: int) -> np.ndarray:
  """`thresholds_between` the ends of a calibration range, its errors
  naming where the range came from."""
  far = calibration_range.far
  if far is None:
    names = dict(range_name='distance_range', widen='distance_range')
  else:
    names = dict(range_name='the calibration range (where the global FAR '
                 f'goes from {far[0]:g} to {far[1]:g})', widen='far_range')
  return thresholds_between(*calibration_range.distance, num, **names)


def spread(values: np.ndarray) -> dict[str, float]:
  return {'worst': float(np.max(values)), 'best': float(np.min(values)),
          'std': float(np.std(values))}


def calibrate(counts: _pair_counts.ClassCounts, target_far: float,
              class_mask: np.ndarray) -> ThresholdCalibration:
  """The calibration at `counts.extra_threshold` (the global threshold)."""
  pos_total, neg_total = counts.pos_total.sum(), counts.neg_total.sum()
  class_far = counts.neg_accepted_extra / np.maximum(counts.neg_total, 1)
  class_frr = 1.0 - counts.pos_accepted_extra / np.maximum(counts.pos_total, 1)
  return ThresholdCalibration(
      target_far=float(target_far),
      threshold=counts.extra_threshold,
      far=float(counts.neg_accepted_extra.sum() / max(neg_total, 1)),
      frr=float(1.0 - counts.pos_accepted_extra.sum() / max(pos_total, 1)),
      class_far=class_far[class_mask],
      class_frr=class_frr[class_mask],
      far_spread=spread(class_far[class_mask]),
      frr_spread=spread(class_frr[class_mask]),
  )


def check_far_range(far_range) -> tuple[float, float]:
  """`far_range` as `(low, high)` false-accept rates, 0 < low < high <= 1."""
  far = _checks.check_range('far_range', far_range, 0.0, 1.0)
  if far[0] <= 0.0:
    raise ValueError(f'far_range must start above 0, got {far}.')
  return far


def resolve_range(far_range, distance_range,
                  negative_histogram: np.ndarray | None) -> CalibrationRange:
  """The calibration range: explicit distances, or read off the FAR."""
  if distance_range is not None:
    return CalibrationRange(
        distance=_checks.check_range('distance_range', distance_range, -1.0,
                                     3.0),
        far=None)
  far = check_far_range(far_range)
  low, high = (far_quantile(negative_histogram, f) for f in far)
  if not low < high:
    raise CalibrationRangeError(collapsed_message(negative_histogram, far,
                                                   low))
  return CalibrationRange(distance=(low, high), far=far)


# A share of all negative pairs in one 2**-14 distance bin (6e-5 wide) that
# no spread of distances gives: a spike, where embeddings (some or all)
# collapsed onto each other.
_SPIKE = 0.05


def collapsed_message(negative_histogram: np.ndarray,
                       far: tuple[float, float], distance: float) -> str:
  """Why the range is empty: how many negatives share one distance bin."""
  index = int(distance * _pair_counts.FINE_BINS_PER_UNIT)
  total = int(negative_histogram.sum())
  share = int(negative_histogram[index]) / total
  cause = {0: ' (different classes point the same way)',
           _pair_counts.FINE_BINS_PER_UNIT: (
               ' (all at cosine 0 is what zero embeddings give)')}.get(
                   index, '')
  where = (f'{share:.1%} of the {total} negative pairs are at distance '
           f'{distance:.6f} (cosine {1 - distance:.6f}), so FAR {far[0]!r} '
           f'and {far[1]!r} are reached within one 2**-14 distance bin')
  if share < _SPIKE:  # no spike of negatives: the range asked is too narrow
    return (f'the calibration range is empty: {where}. far_range (a width '
            f'of {far[1] - far[0]:.2g}) is narrower than the negative pairs '
            'of one bin: widen it, or pass distance_range.')
  return (
      f'the calibration range collapsed: {where}. The classes are not told '
      f'apart: the embeddings have collapsed{cause}. Check the model and its '
      'inputs; to measure such an embedding anyway, pass distance_range.')


def calibration_range(similarity, labels, ref_labels=None, *,
                      far_range=(1e-3, 1e-1),
                      block_size: int | None = None) -> CalibrationRange:
  """The distance range over which the global FAR goes from `far_range[0]`
  to `far_range[1]`.

  Args:
    similarity: `[Q, R]` cosine similarities.
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries
      (self pairs excluded).
    far_range: `(far_lo, far_hi)` global false-accept rates, 0 < lo < hi <= 1.
    block_size: query rows per block (default: adapted to R).

  Returns:
    `CalibrationRange`; each bound within 3.1e-5 of the exact quantile.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4], [0.9, 1.0, 0.2], [0.4, 0.2, 1.0]])
    >>> r = metrics.calibration_range(s, [0, 0, 1], far_range=(0.25, 1.0))
    >>> print(f'{r.distance[0]:.4f} {r.distance[1]:.4f}')  # d = 0.6 and 0.8
    0.6000 0.8000
  """
  source = _pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  return resolve_range(far_range, None,
                       _pair_counts.negative_histogram(source))


def calibrate_threshold(similarity, labels, ref_labels=None, *,
                        target_far: float = 1e-2,
                        block_size: int | None = None,
                        calibration: Sequence[Any] | None = None
                        ) -> ThresholdCalibration:
  """The one global threshold at a target FAR, and each class's FAR and FRR.

  Args:
    similarity: `[Q, R]` cosine similarities.
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries.
    target_far: the global false-accept rate to meet, in (0, 1].
    block_size: query rows per block (default: adapted to R).
    calibration: optional `(similarity, labels)` or `(similarity, labels,
      ref_labels)` of another set to choose the threshold on (a calibration
      transfer): the threshold is then that set's `far_quantile(target_far)`
      and the rates returned are those it reaches on this set
      (`calibration_far`: the exact FAR it reaches on the calibration set).

  Returns:
    `ThresholdCalibration` over the evaluated classes.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
    ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
    >>> c = metrics.calibrate_threshold(s, [0, 0, 1, 1], target_far=0.25)
    >>> print(f'{c.threshold:.2f} FAR {c.far:.2f} FRR {c.frr:.2f}')
    0.60 FAR 0.25 FRR 0.50
    >>> print(c.class_frr)  # class 0's pairs are at d = 0.1, class 1's at 0.7
    [0. 1.]
    >>> # Chosen on a set whose negatives are nearer (d = 0.3 to 0.6): the
    >>> # threshold 0.3 accepts none of this set's (d = 0.6 to 0.9).
    >>> other = np.array([[1.0, 0.95, 0.7, 0.6], [0.95, 1.0, 0.5, 0.4],
    ...                   [0.7, 0.5, 1.0, 0.9], [0.6, 0.4, 0.9, 1.0]])
    >>> t = metrics.calibrate_threshold(s, [0, 0, 1, 1], target_far=0.25,
    ...                                 calibration=(other, [0, 0, 1, 1]))
    >>> print(f'{t.threshold:.2f} FAR {t.far:.2f} there {t.calibration_far}')
    0.30 FAR 0.00 there 0.25
  """
  target_far = _checks.check_far('target_far', target_far)
  source = _pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  mask = _pair_counts.check_enough_classes(source)
  if calibration is None:
    threshold = far_quantile(_pair_counts.negative_histogram(source),
                             target_far)
    counts = _pair_counts.class_counts(
        source, thresholds_between(threshold, threshold + 1.0, 2), threshold)
    return calibrate(counts, target_far, mask)
  if isinstance(calibration, (str, bytes)) or len(calibration) not in (2, 3):
    raise ValueError(
        'calibration must be (similarity, labels) or (similarity, labels, '
        f'ref_labels) of the calibration set, got {calibration!r:.80}.')
  other = _pair_counts.source_from_similarity(*calibration,
                                              block_size=block_size)
  _pair_counts.check_enough_classes(other)
  threshold = far_quantile(_pair_counts.negative_histogram(other), target_far)
  thresholds = thresholds_between(threshold, threshold + 1.0, 2)
  there = _pair_counts.class_counts(other, thresholds, threshold)
  counts = _pair_counts.class_counts(source, thresholds, threshold)
  return dataclasses.replace(
      calibrate(counts, target_far, mask),
      calibration_far=float(there.neg_accepted_extra.sum()
                            / max(there.neg_total.sum(), 1)))
