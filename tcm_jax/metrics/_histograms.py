"""Per-class distance histograms: the state of the one-pass evaluation.

Every threshold metric (the calibration range, utility curves, OPIS, the
global threshold at a target FAR, per-class FAR and FRR) is a function of
two exact per-class histograms of pair distances `d = 1 - S` (float32), one
of positive and one of negative pairs, on a fixed grid of `2**14` bins per
unit of distance. Bin `k` holds the pairs with `(k - 1) / G < d <= k / G`
(`G = 2**14`; bin 0 holds `d <= 0`), so the pairs accepted at the grid edge
`t = k / G` (`d <= t`) are exactly the bins `0..k`: counts at the grid edges
are exact, whatever the number of thresholds read off them.

The histograms stop at a cut, bin `cut_bin`: every pair farther than the cut
is counted in one last column. The cut is chosen before the pass so that it
covers every threshold the evaluation will read (`_one_pass.choose_cut`); a
threshold past it cannot be read and raises `BeyondCutError`.

Histograms of disjoint sets of query rows add up (`merge`): they sum across
blocks, devices and hosts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _threshold

BINS_PER_UNIT = 2**14
# Distances reach 2 + 0.01 at most (a cosine of -1 within COSINE_TOLERANCE):
# the grid's last edge.
LAST_BIN = 2 * BINS_PER_UNIT + BINS_PER_UNIT // 64


class BeyondCutError(ValueError):
  """A threshold lies past the histograms' cut: the pass must be redone with
  a farther cut (`one_pass` does so by itself)."""


def distance_bins(similarity: np.ndarray, cut_bin: int) -> np.ndarray:
  """The grid bin of each pair: `ceil((1 - S) * G)` in `[0, cut_bin + 1]`.

  `cut_bin + 1` is the overflow column (every pair past the cut).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _histograms
    >>> s = np.float32([1.5, 1.0, 1 - 2**-14, 0.9999, 0.5])
    >>> print(_histograms.distance_bins(s, 8192))
    [   0    0    1    2 8192]
  """
  distance = np.subtract(np.float32(1), similarity, dtype=np.float32)
  scaled = np.ceil(distance * np.float32(BINS_PER_UNIT))
  np.clip(scaled, 0, cut_bin + 1, out=scaled)
  return scaled.astype(np.int64)


def mask_similarity(cut_bin: int) -> np.float32:
  """Every pair whose bin is at most `cut_bin` has `S >= this`.

  One bin short of the cut, so that no rounding of `1 - S` can lose a pair:
  if `S < 1 - (cut_bin + 1) / G` then `fl(1 - S) >= (cut_bin + 1) / G`.
  """
  return np.float32(1 - (cut_bin + 1) / BINS_PER_UNIT)


def edge_bin(distance: float) -> int:
  """The grid edge nearest `distance`, clipped to `[0, LAST_BIN]`."""
  return int(min(max(round(distance * BINS_PER_UNIT), 0), LAST_BIN))


@dataclasses.dataclass(frozen=True)
class PairHistograms:
  """Exact per-class histograms of positive and negative pair distances.

  Rows are query classes (dense ids); columns are the grid bins
  `0..cut_bin`, then one column of every pair past the cut.

  Attributes:
    positive: `[classes, cut_bin + 2]` positive pairs by distance bin
      (int32 where every class's pairs fit, int64 otherwise).
    negative: `[classes, cut_bin + 2]` negative pairs by distance bin.
    cut_bin: the last bin held; edges past `cut_bin / G` cannot be read.
  """
  positive: np.ndarray
  negative: np.ndarray
  cut_bin: int

  @property
  def cut(self) -> float:
    """The distance of the last edge held."""
    return self.cut_bin / BINS_PER_UNIT

  def merge(self, other: PairHistograms) -> PairHistograms:
    """The histograms of both sets of pairs (disjoint query rows)."""
    if other.cut_bin != self.cut_bin or other.positive.shape != (
        self.positive.shape):
      raise ValueError(
          'PairHistograms can only be merged with the same classes and cut: '
          f'got {self.positive.shape} cut {self.cut_bin} and '
          f'{other.positive.shape} cut {other.cut_bin}.')
    return PairHistograms(self.positive + other.positive,
                          self.negative + other.negative, self.cut_bin)

  def global_negatives(self) -> np.ndarray:
    """`[cut_bin + 2]` every negative pair by bin (all classes)."""
    return self.negative.sum(axis=0, dtype=np.int64)

  def far_edge(self, far: float) -> int:
    """The first grid edge at which the global FAR reaches `far`.

    The FAR at edge `k` is exact; the edge is within one bin (`1 / G`, 6.1e-5)
    above the `ceil(far * n)`-th smallest negative distance.

    Raises:
      BeyondCutError: the edge lies past the cut.
    """
    # Bin k holds (k - 1) / G < d <= k / G: the bin of the order statistic
    # is the first edge reaching its FAR.
    index = _threshold.quantile_bin(self.global_negatives(), far)
    if index > self.cut_bin:
      raise BeyondCutError(
          f'FAR {far!r} is reached past the histograms\' cut at distance '
          f'{self.cut:.6f}.')
    return index

  def accepted(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`([classes, k], [classes, k])` int64 positive and negative pairs with
    `d <= edges / G`, for grid edges (ints, any order) at most `cut_bin`.

    Raises:
      BeyondCutError: an edge past the cut.
    """
    edges = np.maximum(np.asarray(edges, np.int64), 0)
    if edges.size and int(edges.max()) > self.cut_bin:
      raise BeyondCutError(
          f'a threshold at distance {edges.max() / BINS_PER_UNIT:.6f} lies '
          f"past the histograms' cut at {self.cut:.6f}.")
    # Running sums over a few classes at a time: `[classes, k]` memory,
    # never a cumulative sum of every class and bin at once.
    last = int(edges.max()) + 1 if edges.size else 1

    def at_edges(histogram):
      out = np.empty((histogram.shape[0], edges.size), np.int64)
      for first in range(0, histogram.shape[0], 256):
        rows = histogram[first:first + 256, :last].astype(np.int64)
        np.cumsum(rows, axis=1, out=rows)  # in place: 3x faster
        out[first:first + 256] = rows[:, edges]
      return out

    return at_edges(self.positive), at_edges(self.negative)


def snap_thresholds(low: float, high: float, num: int, *,
                    range_name: str = 'the range') -> np.ndarray:
  """`num` evenly spaced thresholds from `low` to `high`, each moved to the
  nearest grid edge: `[num]` int64 edges, strictly increasing.

  A threshold moves by at most half a bin (3.1e-5 in distance).

  Raises:
    ValueError: the range holds fewer than `num` grid edges.

  Examples:
    >>> from tcm_jax.metrics import _histograms
    >>> print(_histograms.snap_thresholds(0.25, 0.5, 3))
    [4096 6144 8192]
  """
  num = _checks.check_int('num_thresholds', num, 2)
  edges = np.array([edge_bin(t) for t in np.linspace(low, high, num)],
                   np.int64)
  if np.any(np.diff(edges) <= 0):
    available = edge_bin(high) - edge_bin(low) + 1
    raise ValueError(
        f'num_thresholds={num} is more than the {available} grid edges '
        f'(2**-14 apart) in {range_name} ({low:.6g}, {high:.6g}): use '
        f"num_thresholds <= {max(available, 2)}, a wider range, or "
        "engine='exact'.")
  return edges


def edge_distances(edges: np.ndarray) -> np.ndarray:
  """The float32 distances of grid edges (exact: multiples of 2**-14)."""
  return (np.asarray(edges, np.float64) / BINS_PER_UNIT).astype(np.float32)


def check_range(distance_range) -> tuple[float, float]:
  """An explicit `distance_range`, within the grid."""
  low, high = _checks.check_range('distance_range', distance_range, -1.0,
                                  3.0)
  top = LAST_BIN / BINS_PER_UNIT
  if low < 0 or high > top:
    raise ValueError(
        f"distance_range must lie within [0, {top:g}] with engine='histogram' "
        f'(the distances its grid holds), got {(low, high)}; '
        "engine='exact' takes any range.")
  return low, high


def counts_at_edges(histograms: PairHistograms, far_range, distance_range,
                    num_thresholds: int, target_far: float
                    ) -> tuple[_pair_counts.ClassCounts,
                               _threshold.CalibrationRange]:
  """Counts at the grid edges nearest the range's thresholds and at the
  global threshold (the first edge reaching `target_far`)."""
  if distance_range is None:
    far = _threshold.check_far_range(far_range)
    low, high = (histograms.far_edge(f) for f in far)
    if not low < high:
      negatives = histograms.global_negatives()
      raise _threshold.CalibrationRangeError(_threshold.collapsed_message(
          np.pad(negatives, (0, max(0, _pair_counts.FINE_BINS
                                    - len(negatives)))),
          far, low / BINS_PER_UNIT))
    calibration_range = _threshold.CalibrationRange(
        distance=(low / BINS_PER_UNIT, high / BINS_PER_UNIT), far=far)
    names = dict(range_name='the calibration range (where the global FAR '
                 f'goes from {far[0]:g} to {far[1]:g})')
  else:
    calibration_range = _threshold.CalibrationRange(
        distance=check_range(distance_range), far=None)
    names = dict(range_name='distance_range')
  edges = snap_thresholds(*calibration_range.distance, num_thresholds,
                          **names)
  return (class_counts_at(histograms, edges, histograms.far_edge(target_far)),
          calibration_range)


def class_counts_at(histograms: PairHistograms, edges: np.ndarray,
                    extra_edge: int) -> _pair_counts.ClassCounts:
  """Per-class counts at grid edges `edges` (ints, increasing) and at one
  more, `extra_edge`, read off the histograms (edges at most the cut)."""
  edges = np.asarray(edges, np.int64)
  positive, negative = histograms.accepted(np.append(edges, extra_edge))
  return _pair_counts.ClassCounts(
      thresholds=edge_distances(edges),
      pos_accepted=positive[:, :-1], neg_accepted=negative[:, :-1],
      pos_total=histograms.positive.sum(axis=1, dtype=np.int64),
      neg_total=histograms.negative.sum(axis=1, dtype=np.int64),
      extra_threshold=extra_edge / BINS_PER_UNIT,
      pos_accepted_extra=positive[:, -1], neg_accepted_extra=negative[:, -1])
