"""Bootstrap intervals over classes of the operating points.

The population is the evaluated classes (a positive and a negative pair
each), the same as `class_bootstrap`'s: resample `b` draws them with
replacement, rows `bootstrap_indices(n, num_resamples, seed)[b]` (for an
`Evaluation` of the same set and seed, the very classes `class_bootstrap`
draws). Classes with no positive pair (a single sample) are held fixed:
their negatives count once in every resample, as in the global FAR. Each
resample's global histograms are the drawn rows summed, each as often as
drawn, plus the fixed ones, and every statistic is
recomputed from them exactly as `operating_points_from_histograms` does:
TAR at each resolvable target FAR, the global threshold at `target_far`, the
EER and the ROC AUC. The percentile interval of the resampled values is
`Interval`'s (see `class_bootstrap`).

Cost: `2 x num_resamples x classes x bins` multiply-adds (every resample's
histograms as matrix products of the draws with 256 classes' rows at a
time, over the bins between the nearest and the farthest pair, in float32
while that is exact): 4 s for 1,000 resamples of 1,400 classes with every
bin of the grid occupied, on 2 CPU cores; memory `2 x num_resamples x bins`
sums (0.2 GiB for 1,000 resamples over 26,000 bins).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _bootstrap
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _operating_points

_RESAMPLES_AT_ONCE = 64


def resampled_statistics(pos: np.ndarray, neg: np.ndarray, first_bin: int,
                         targets: Sequence[float], target_far: float
                         ) -> dict[str, np.ndarray]:
  """Each statistic of each resample's global histograms.

  Args:
    pos: `[B, bins]` float64 positive pairs by bin, from `first_bin`.
    neg: `[B, bins]` float64 negative pairs by bin.
    first_bin: the grid bin of column 0.
    targets: target FARs of `tar_at_<far>`.
    target_far: the FAR of `global_threshold`.

  Returns:
    `{'tar_at_<far>' for each target, 'global_threshold', 'eer', 'auc'}`
    to `[B]`.
  """
  pos_cum, neg_cum = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
  pos_total, neg_total = pos_cum[:, -1], neg_cum[:, -1]
  rows = np.arange(len(pos))

  def edge_at(far):  # first column where the FAR reaches `far`
    needed = np.maximum(1, np.ceil(far * neg_total * (1 - 1e-12)))
    return np.sum(neg_cum < needed[:, None], axis=1)

  out = {}
  for far in targets:
    out[f'tar_at_{far:g}'] = pos_cum[rows, edge_at(far)] / pos_total
  out['global_threshold'] = (edge_at(target_far) + first_bin) / (
      _histograms.BINS_PER_UNIT)
  # The EER: FAR and FRR linear across the bin where they cross, from FAR 0
  # and FRR 1 one bin before column 0 (see `equal_error_rate`).
  far = np.pad(neg_cum / neg_total[:, None], ((0, 0), (1, 0)))
  frr = np.pad(1 - pos_cum / pos_total[:, None], ((0, 0), (1, 0)),
               constant_values=1.0)
  gap = far - frr
  k = np.argmax(gap >= 0, axis=1)
  before, at = gap[rows, k - 1], gap[rows, k]
  share = -before / (at - before)  # before < 0 <= at
  out['eer'] = far[rows, k - 1] + share * (far[rows, k] - far[rows, k - 1])
  out['auc'] = np.sum(neg * (pos_cum - pos / 2), axis=1) / (
      pos_total * neg_total)
  return out


def operating_point_intervals(histograms: _histograms.PairHistograms, *,
                              fars: Sequence[float] = (
                                  _operating_points.DEFAULT_FARS),
                              target_far: float = 1e-2,
                              min_false_accepts: int = (
                                  _operating_points.MIN_FALSE_ACCEPTS),
                              num_resamples: int = 1000,
                              confidence: float = 0.95, seed: Any = 0
                              ) -> dict[str, _bootstrap.Interval]:
  """Bootstrap intervals over classes of TAR at each FAR, the global
  threshold, the EER and the ROC AUC.

  Args:
    histograms: per-class histograms without a cut (`pair_histograms`).
    fars: target FARs; those the set does not resolve
      (`min_false_accepts`) get no interval.
    target_far: the FAR of the global threshold.
    min_false_accepts: the resolvability rule of `operating_points`.
    num_resamples: resamples, at least 1 (1,000 by default).
    confidence: nominal coverage, in (0, 1).
    seed: for `np.random.default_rng`; the same seed, the same intervals.

  Returns:
    `{'tar_at_<far>' for each resolvable far, 'global_threshold', 'eer',
    'auc'}` to `Interval`, each estimate the value of `operating_points` on the
    histograms as given.

  Raises:
    BeyondCutError: pairs past the histograms' cut.
    ValueError: fewer than two classes with a positive and a negative pair,
      a bad argument.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(30), 8)
    >>> z = rng.normal(size=(30, 16))[labels] + rng.normal(size=(240, 16))
    >>> histograms = advanced.pair_histograms(
    ...     advanced.source_from_embeddings(z, labels))
    >>> intervals = advanced.operating_point_intervals(
    ...     histograms, fars=(1e-2,), num_resamples=200)
    >>> sorted(intervals)
    ['auc', 'eer', 'global_threshold', 'tar_at_0.01']
    >>> eer = intervals['eer']
    >>> bool(eer.low <= eer.estimate <= eer.high)
    True
  """
  targets = _operating_points.check_fars(fars)
  target_far = _checks.check_far('target_far', target_far)
  min_false_accepts = _checks.check_int('min_false_accepts',
                                        min_false_accepts, 1)
  _checks.check_fraction('confidence', confidence)
  positive, negative = _operating_points.global_counts(histograms)
  mask = _operating_points.class_mask(histograms)
  occupied = np.flatnonzero((positive > 0) | (negative > 0))
  first, last = int(occupied[0]), int(occupied[-1]) + 1
  resolved = [t for t in targets if _operating_points.resolvable(
      t, int(negative.sum()), min_false_accepts)]
  rows = np.flatnonzero(mask)
  indices = _bootstrap.bootstrap_indices(len(rows), num_resamples, seed)
  weights = np.zeros((len(indices), len(rows)), np.float32)
  np.add.at(weights, (np.arange(len(indices))[:, None], indices), 1.0)
  # [B, bins]: every resample's global histograms, summed 256 classes at a
  # time; float32 products and sums are exact while every sum stays below
  # 2**24 (twice as fast as float64).
  largest = max(int(positive.max()), int(negative.max()))
  dtype = (np.float32 if float(weights.max(initial=1)) * largest < 2**24
           else np.float64)
  pos = np.zeros((len(indices), last - first), dtype)
  neg = np.zeros((len(indices), last - first), dtype)
  for start in range(0, len(rows), 256):
    chunk = rows[start:start + 256]
    drawn = weights[:, start:start + 256].astype(dtype)
    pos += drawn @ histograms.positive[chunk, first:last].astype(dtype)
    neg += drawn @ histograms.negative[chunk, first:last].astype(dtype)
  fixed = histograms.negative[~mask, first:last].sum(axis=0,
                                                     dtype=np.float64)
  estimate = resampled_statistics(
      positive[None, first:last].astype(np.float64),
      negative[None, first:last].astype(np.float64), first, resolved,
      target_far)
  chunks = [resampled_statistics(
      pos[start:start + _RESAMPLES_AT_ONCE].astype(np.float64),
      neg[start:start + _RESAMPLES_AT_ONCE].astype(np.float64) + fixed,
      first, resolved, target_far)
            for start in range(0, len(indices), _RESAMPLES_AT_ONCE)]
  return {name: _bootstrap.percentile_interval(
      float(estimate[name][0]),
      np.concatenate([chunk[name] for chunk in chunks]), confidence)
          for name in estimate}

