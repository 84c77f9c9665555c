"""Confidence intervals over classes: the percentile bootstrap.

An open-world test split is a sample of classes, and its metrics change with
the classes that happened to be drawn. The class bootstrap measures how much:
it draws the classes again with replacement, `n` of `n`, recomputes each
metric on the resampled classes, and reads a percentile interval off the
`num_resamples` resampled values.

The draws are reproducible: resample `b` is row `b` of
`np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))`
(`bootstrap_indices`), so the same seed gives the same interval, bit for bit,
and every metric of one `class_bootstrap` call sees the same resampled
classes.

What is held fixed (the bootstrap is conditional on it): the evaluation's
pairs, and so every query's ranking against all the references (those of
classes not drawn included) and every class's negatives against all other
classes; the calibration range and its thresholds, read once from all
negative pairs; epsilon and beta. Only which classes, and how many copies
of each, enter the means and spreads is resampled. A class drawn twice counts
as two classes (in OPIS's variance and eps-OPIS's worst group too).

References:
  Efron, Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall,
  1993, chapters 6 (standard errors) and 13 (percentile intervals).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _evaluation
from tcm_jax.metrics._opis import eps_opis_from_utility
from tcm_jax.metrics._opis import opis_from_utility

# Elements gathered at once when resamples are evaluated in chunks.
_CHUNK_ELEMENTS = 2**22


class Interval(NamedTuple):
  """A bootstrap estimate with its percentile interval.

  Attributes:
    estimate: the statistic on the original classes.
    low: the `(1 - confidence) / 2` quantile of the resampled statistics
      (linear interpolation, NumPy's default).
    high: the `(1 + confidence) / 2` quantile.
    std: standard deviation of the resampled statistics (`ddof=1`; 0 for a
      single resample): the bootstrap standard error.
    num_resamples: resamples drawn.
    confidence: the interval's nominal coverage.
  """
  estimate: float
  low: float
  high: float
  std: float
  num_resamples: int
  confidence: float


def bootstrap_indices(num_classes: int, num_resamples: int = 1000,
                      seed: Any = 0) -> np.ndarray:
  """The class indices of every resample, drawn with replacement.

  Args:
    num_classes: `n`, the classes to draw from (at least 2).
    num_resamples: resamples, at least 1.
    seed: anything `np.random.default_rng` takes; the same seed gives the
      same indices.

  Returns:
    `[num_resamples, n]` int64, exactly
    `np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))`:
    row `b` holds the classes of resample `b`.

  Raises:
    ValueError: fewer than 2 classes, or `num_resamples < 1`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import bootstrap_indices
    >>> bootstrap_indices(4, num_resamples=2, seed=0)
    array([[3, 2, 2, 1],
           [1, 0, 0, 0]])
    >>> rng = np.random.default_rng(0)
    >>> np.array_equal(bootstrap_indices(4, 2, seed=0),
    ...                rng.integers(0, 4, size=(2, 4)))
    True
  """
  num_resamples = _checks.check_int('num_resamples', num_resamples, 1)
  if operator.index(num_classes) < 2:
    raise ValueError(
        f'the bootstrap needs at least 2 classes, got {num_classes}.')
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_classes, size=(num_resamples, num_classes))


def percentile_interval(estimate: float, resampled: np.ndarray,
                        confidence: float) -> Interval:
  """The `Interval` of `estimate` from its resampled values."""
  resampled = np.asarray(resampled, np.float64)
  low, high = np.quantile(resampled, [(1 - confidence) / 2,
                                      (1 + confidence) / 2])
  std = float(np.std(resampled, ddof=1)) if len(resampled) > 1 else 0.0
  return Interval(estimate=float(estimate), low=float(low), high=float(high),
                  std=std, num_resamples=len(resampled),
                  confidence=float(confidence))


def _scalar(value) -> float:
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(
        f'statistic must return a scalar, got shape {value.shape}.')
  return float(value.reshape(()))


def bootstrap_interval(statistic: Callable[..., Any], *per_class_arrays,
                       num_resamples: int = 1000, confidence: float = 0.95,
                       seed: Any = 0) -> Interval:
  """Percentile bootstrap interval of a statistic of per-class arrays.

  Resample `b` takes the rows `bootstrap_indices(n, num_resamples, seed)[b]`
  of every array (the same rows of each, so that they stay matched by class)
  and calls `statistic` on them; the statistic is called once per resample,
  so any function works.

  Args:
    statistic: `fn(*arrays) -> scalar`, e.g. `np.mean`.
    *per_class_arrays: one or more arrays with one row per class (axis 0,
      the same length `n >= 2` for all).
    num_resamples: resamples, at least 1.
    confidence: nominal coverage, in (0, 1).
    seed: for `np.random.default_rng`; the same seed, the same interval.

  Returns:
    `Interval`, its `estimate` the statistic on the arrays as given.

  Raises:
    ValueError: no array, a 0-d array, arrays of different lengths, fewer
      than 2 classes, `num_resamples < 1`, `confidence` outside (0, 1), or a
      statistic that returns more than one value.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import bootstrap_interval
    >>> values = np.random.default_rng(1).normal(size=400)
    >>> interval = bootstrap_interval(np.mean, values, seed=0)
    >>> interval.low < interval.estimate < interval.high
    True
    >>> # The standard error of a mean is sigma / sqrt(n):
    >>> print(round(interval.std / (values.std() / np.sqrt(400)), 1))
    1.0
    >>> # A ratio of sums per class: hits over queries.
    >>> hits, queries = np.array([3, 0, 5, 2]), np.array([4, 2, 5, 3])
    >>> ratio = lambda h, q: h.sum() / q.sum()
    >>> bootstrap_interval(ratio, hits, queries, seed=0).estimate
    0.7142857142857143
  """
  if not per_class_arrays:
    raise ValueError('bootstrap_interval needs at least one per-class array.')
  _checks.check_fraction('confidence', confidence)
  arrays = [np.asarray(a) for a in per_class_arrays]
  if any(a.ndim == 0 for a in arrays):
    raise ValueError('per-class arrays need a class axis (axis 0), got a '
                     'scalar.')
  lengths = {len(a) for a in arrays}
  if len(lengths) != 1:
    raise ValueError('per-class arrays must have the same length along axis '
                     f'0 (one row per class), got {[len(a) for a in arrays]}.')
  indices = bootstrap_indices(len(arrays[0]), num_resamples, seed)
  estimate = _scalar(statistic(*arrays))
  resampled = np.array([_scalar(statistic(*(a[rows] for a in arrays)))
                        for rows in indices])
  return percentile_interval(estimate, resampled, confidence)


def _chunks(indices: np.ndarray, elements_per_row: int):
  """Row chunks of `indices` gathering about `_CHUNK_ELEMENTS` elements, the
  last padded with copies of its last row to the same shape; with each the
  number of real rows."""
  rows = max(1, min(len(indices), _CHUNK_ELEMENTS // max(elements_per_row, 1)))
  for start in range(0, len(indices), rows):
    chunk = indices[start:start + rows]
    real = len(chunk)
    if real < rows:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], rows - real, 0)])
    yield chunk, real


def _resampled_sums(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """`[B, columns]`: the column sums of `values` over each resample's rows."""
  out = [values[chunk[:real]].sum(axis=1)
         for chunk, real in _chunks(indices, values.size)]
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=('epsilon',))
def _opis_of_resamples(utility, indices, *, epsilon):
  def one(rows):
    resampled = utility[rows]
    return (opis_from_utility(resampled),
            eps_opis_from_utility(resampled, epsilon=epsilon))
  return jax.vmap(one)(indices)


def _resampled_opis(utility: np.ndarray, indices: np.ndarray,
                    epsilon: float) -> tuple[np.ndarray, np.ndarray]:
  opis, eps_opis = [], []
  utility = np.asarray(utility, np.float32)
  for chunk, real in _chunks(indices, utility.size):
    got = _opis_of_resamples(utility, chunk, epsilon=float(epsilon))
    opis.append(np.asarray(got[0])[:real])
    eps_opis.append(np.asarray(got[1])[:real])
  return np.concatenate(opis), np.concatenate(eps_opis)


def class_bootstrap(evaluation: _evaluation.Evaluation, *,
                    num_resamples: int = 1000, confidence: float = 0.95,
                    seed: Any = 0) -> dict[str, Interval]:
  """Bootstrap intervals of every metric of an evaluation over its classes.

  The population is the evaluated classes (`evaluation.curves.classes`; for
  an `Evaluation` of `evaluate_embeddings` or `evaluate_similarity` they are
  exactly the classes with a query evaluated for retrieval,
  `evaluation.retrieval.classes`). One draw, `bootstrap_indices(n,
  num_resamples, seed)`, serves every metric: resample `b` takes the classes
  of row `b`, with their retrieval sums and utility curves (matched by
  label). Then

  - Recall@K, MAP@R, R-precision: the resampled classes' summed hits (AP@R,
    R-precision) over their summed query counts, the query-weighted mean as
    the point value is computed;
  - OPIS, eps-OPIS: `opis_from_utility` and `eps_opis_from_utility` (with
    `evaluation.epsilon`) of the resampled utility rows;
  - mean utility, mean TPR: the mean of the resampled classes' means over
    the thresholds.

  The references, the calibration range and its thresholds are held fixed
  (see the module docstring): the intervals are conditional on them.

  Args:
    evaluation: an `Evaluation`.
    num_resamples: resamples, at least 1.
    confidence: nominal coverage, in (0, 1).
    seed: for `np.random.default_rng`; the same seed, the same intervals.

  Returns:
    `{'recall_at_<K>' for each K, 'map_at_r', 'r_precision', 'opis',
    'eps_opis', 'mean_utility', 'mean_tpr'}` to `Interval`. Each estimate is
    the evaluation's own value (for MAP@R and R-precision the resamples'
    per-class sums reproduce it within float32 rounding, about 1e-7).

  Raises:
    ValueError: fewer than 2 classes, `num_resamples < 1`, `confidence`
      outside (0, 1), or retrieval and utility classes that differ.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(12), 10)
    >>> z = rng.normal(size=(12, 16))[labels] + rng.normal(size=(120, 16))
    >>> result = metrics.evaluate_embeddings(z, labels, ks=(1, 4))
    >>> intervals = metrics.class_bootstrap(result, num_resamples=200)
    >>> sorted(intervals)  # doctest: +NORMALIZE_WHITESPACE
    ['eps_opis', 'map_at_r', 'mean_tpr', 'mean_utility', 'opis', 'r_precision',
     'recall_at_1', 'recall_at_4']
    >>> r1 = intervals['recall_at_1']
    >>> r1.estimate == result.retrieval.recall_at_k[1], r1.low <= r1.high
    (True, True)
  """
  _checks.check_fraction('confidence', confidence)
  retrieval = evaluation.retrieval
  curves = evaluation.curves
  if not np.array_equal(retrieval.classes, curves.classes):
    raise ValueError(
        'the classes with retrieval queries and the evaluated (utility) '
        f'classes differ ({len(retrieval.classes)} and {len(curves.classes)} '
        'classes): they cannot be resampled together.')
  num_classes = len(curves.classes)
  indices = bootstrap_indices(num_classes, num_resamples, seed)

  ks = retrieval.ks
  # One row per class; each metric is a ratio of its column sums.
  per_class = np.concatenate(
      [retrieval.class_sums, evaluation.class_mean_utility[:, None],
       evaluation.class_mean_tpr[:, None]], axis=1)
  totals = _resampled_sums(per_class, indices)
  queries = totals[:, len(ks) + 2]
  resampled = {f'recall_at_{k}': totals[:, i] / queries
               for i, k in enumerate(ks)}
  resampled['map_at_r'] = totals[:, len(ks)] / queries
  resampled['r_precision'] = totals[:, len(ks) + 1] / queries
  resampled['opis'], resampled['eps_opis'] = _resampled_opis(
      curves.utility, indices, evaluation.epsilon)
  resampled['mean_utility'] = totals[:, -2] / num_classes
  resampled['mean_tpr'] = totals[:, -1] / num_classes

  estimates = {f'recall_at_{k}': v for k, v in retrieval.recall_at_k.items()}
  estimates.update(
      map_at_r=retrieval.map_at_r, r_precision=retrieval.r_precision,
      opis=evaluation.opis, eps_opis=evaluation.eps_opis,
      mean_utility=evaluation.mean_utility, mean_tpr=evaluation.mean_tpr)
  return {name: percentile_interval(estimates[name], values, confidence)
          for name, values in resampled.items()}
