"""Every metric of an evaluation set in two streamed passes over its pairs.

Pass 1 ranks each query block (Recall@K, MAP@R, R-precision) and histograms
its negative-pair distances (the calibration range and the global threshold);
pass 2 counts every pair by class against the thresholds (utility curves,
OPIS, eps-OPIS, per-class FAR/FRR). Only `[block, N]` similarities and
`[classes, thresholds]` counts are ever held.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax.metrics import pair_counts
from tcm_jax.metrics import retrieval
from tcm_jax.metrics import threshold as threshold_lib
# From the module itself: the package's `opis` is the function of that name.
from tcm_jax.metrics.opis import check_beta
from tcm_jax.metrics.opis import check_epsilon
from tcm_jax.metrics.opis import curves_from_counts
from tcm_jax.metrics.opis import eps_opis_from_utility
from tcm_jax.metrics.opis import opis_from_utility
from tcm_jax.metrics.opis import UtilityCurves


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Every metric of an evaluation set.

  Attributes:
    retrieval: Recall@K, MAP@R, R-precision and the excluded queries.
    curves: per-class utility curves over the calibration range.
    opis: OPIS over the calibration range.
    eps_opis: eps-OPIS.
    epsilon: the worst-class fraction of `eps_opis`.
    beta: the F-beta weight of the utility.
    calibration: the global threshold at the target FAR, per-class FAR/FRR.
    far_reached: exact global FAR at the two ends of the range.
    excluded_classes: labels of classes left out of the utility (no positive
      pair: a single sample).
    num_queries: queries in the set.
    num_references: references in the set.
  """
  retrieval: retrieval.RetrievalMetrics
  curves: UtilityCurves
  opis: float
  eps_opis: float
  epsilon: float
  beta: float
  calibration: threshold_lib.ThresholdCalibration
  far_reached: tuple[float, float]
  excluded_classes: np.ndarray
  num_queries: int
  num_references: int

  def to_dict(self) -> dict[str, Any]:
    """The scalar metrics, range and spreads as JSON-ready Python values."""
    calibration_range = self.curves.calibration_range
    return {
        'num_queries': self.num_queries,
        'num_references': self.num_references,
        'num_classes_evaluated': len(self.curves.classes),
        'excluded_classes': self.excluded_classes.tolist(),
        'num_excluded_queries': self.retrieval.num_excluded_queries,
        'recall_at_k': {str(k): v
                        for k, v in self.retrieval.recall_at_k.items()},
        'map_at_r': self.retrieval.map_at_r,
        'r_precision': self.retrieval.r_precision,
        'opis': self.opis,
        'eps_opis': self.eps_opis,
        'epsilon': self.epsilon,
        'beta': self.beta,
        'num_thresholds': len(self.curves.thresholds),
        'calibration_range': {
            'distance': list(calibration_range.distance),
            'far': (None if calibration_range.far is None
                    else list(calibration_range.far)),
            'far_reached': list(self.far_reached),
        },
        'calibration': {
            'target_far': self.calibration.target_far,
            'threshold': self.calibration.threshold,
            'far': self.calibration.far,
            'frr': self.calibration.frr,
            'class_far': self.calibration.far_spread,
            'class_frr': self.calibration.frr_spread,
        },
    }


@functools.partial(
    jax.jit, static_argnames=('num_neighbours', 'ks', 'exclude_self'))
def _first_pass_block(queries, refs, query_ids, ref_ids, row_valid, offset,
                      num_relevant, *, num_neighbours, ks, exclude_self):
  histogram = pair_counts.negative_histogram_block(
      queries, refs, query_ids, ref_ids, row_valid, offset,
      exclude_self=exclude_self)
  sums = retrieval.retrieval_block(
      queries, refs, query_ids, ref_ids, row_valid, offset, num_relevant,
      num_neighbours=num_neighbours, ks=ks, exclude_self=exclude_self)
  return histogram, sums


def _two_pass_progress(progress):
  if progress is None:
    return None, None
  first = lambda done, total: progress(done, 2 * total)
  second = lambda done, total: progress(total + done, 2 * total)
  return first, second


def evaluate(source: pair_counts.PairSource, *, far_range=(1e-3, 1e-1),
             distance_range=None, beta: float = 1.0, num_thresholds: int = 101,
             epsilon: float = 0.1, ks: Sequence[int] = (1, 2, 4, 8),
             target_far: float = 1e-2,
             progress: pair_counts.ProgressFn | None = None) -> Evaluation:
  """Every metric of a pair source; see `evaluate_embeddings`."""
  if distance_range is None:
    threshold_lib.check_range('far_range', far_range, 0.0, 1.0)
  else:
    threshold_lib.check_range('distance_range', distance_range, -1.0, 3.0)
  threshold_lib.thresholds_between(0.0, 1.0, num_thresholds)
  check_epsilon(epsilon)
  threshold_lib.check_far('target_far', target_far)
  check_beta(beta)
  mask = pair_counts.check_enough_classes(source)
  first_progress, second_progress = _two_pass_progress(progress)

  retrieval_plan = retrieval.plan(source, ks)
  ref_ids = jnp.asarray(source.ref_ids)
  histogram = np.zeros(pair_counts.FINE_BINS, np.int64)
  sums = np.zeros(len(retrieval_plan.ks) + 3, np.float64)
  for block in pair_counts.blocks(source, first_progress):
    block_histogram, block_sums = _first_pass_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, retrieval_plan.block_relevant(block),
        num_neighbours=retrieval_plan.num_neighbours, ks=retrieval_plan.ks,
        exclude_self=source.exclude_self)
    histogram += np.asarray(block_histogram)
    sums += np.asarray(block_sums, np.float64)

  calibration_range = threshold_lib.resolve_range(far_range, distance_range,
                                                  histogram)
  thresholds = threshold_lib.thresholds_between(*calibration_range.distance,
                                                num_thresholds)
  global_threshold = threshold_lib.far_quantile(histogram, target_far)
  counts = pair_counts.class_counts(source, thresholds, global_threshold,
                                    second_progress)
  curves = curves_from_counts(counts, mask, source.classes, beta,
                              calibration_range)
  negatives = max(int(counts.neg_total.sum()), 1)
  query_classes = np.zeros(source.num_classes, bool)
  query_classes[source.query_ids] = True
  return Evaluation(
      retrieval=retrieval.summarize(source, retrieval_plan, sums),
      curves=curves,
      opis=float(opis_from_utility(curves.utility)),
      eps_opis=float(eps_opis_from_utility(curves.utility, epsilon=epsilon)),
      epsilon=float(epsilon),
      beta=float(beta),
      calibration=threshold_lib.calibrate(counts, target_far, mask),
      far_reached=(float(counts.neg_accepted[:, 0].sum() / negatives),
                   float(counts.neg_accepted[:, -1].sum() / negatives)),
      excluded_classes=source.classes[query_classes & ~mask],
      num_queries=source.num_queries,
      num_references=source.num_refs,
  )


def evaluate_embeddings(embeddings, labels, ref_embeddings=None,
                        ref_labels=None, *, block_size: int | None = None,
                        **kwargs) -> Evaluation:
  """Every metric of an evaluation set of embeddings, streamed in blocks.

  Query blocks are compared with all references on device; the `[N, N]`
  similarity is never built, so memory grows with `block_size * N` plus
  `classes * num_thresholds`. The results equal those of
  `evaluate_similarity` on the full matrix.

  Args:
    embeddings: `[N, dim]` embeddings (any scale: compared by cosine).
    labels: `[N]` integer class ids.
    ref_embeddings: optional `[M, dim]` references; default: the queries,
      each ranked against all the others (leave-one-out).
    ref_labels: `[M]` class ids of `ref_embeddings`.
    block_size: query rows per block (default: about 2**21 / M on CPU,
      2**26 / M on accelerators).
    **kwargs: `far_range` ((1e-3, 1e-1)), `distance_range` (None: explicit
      distances, overriding `far_range`), `beta` (1.0), `num_thresholds`
      (101), `epsilon` (0.1), `ks` ((1, 2, 4, 8)), `target_far` (1e-2, the
      global threshold's FAR), `progress` (a `fn(done, total)` called after
      each block).

  Returns:
    `Evaluation`.

  Raises:
    ValueError: NaN or infinite embeddings (with the count of bad rows),
      labels of the wrong length, fewer than two classes with two samples,
      an empty or reversed range, `num_thresholds < 2`, `epsilon` outside
      (0, 1).
    TypeError: non-integer labels.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(10), 20)
    >>> z = rng.normal(size=(10, 32))[labels] + rng.normal(size=(200, 32))
    >>> result = metrics.evaluate_embeddings(z, labels, block_size=64)
    >>> result.retrieval.recall_at_k[1] > 0.9, 0 <= result.opis <= 0.25
    (True, True)
  """
  source = pair_counts.source_from_embeddings(
      embeddings, labels, ref_embeddings, ref_labels, block_size=block_size)
  return evaluate(source, **kwargs)


def evaluate_similarity(similarity, labels, ref_labels=None, *,
                        block_size: int | None = None,
                        **kwargs) -> Evaluation:
  """Every metric of a `[Q, R]` similarity matrix.

  Args:
    similarity: `[Q, R]` cosine similarities.
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries
      (self pairs excluded).
    block_size: query rows per block (default: about 2**21 / R on CPU,
      2**26 / R on accelerators).
    **kwargs: as for `evaluate_embeddings`.

  Returns:
    `Evaluation`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
    ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
    >>> result = metrics.evaluate_similarity(
    ...     s, [0, 0, 1, 1], distance_range=(0.5, 0.7), target_far=0.25)
    >>> result.retrieval.recall_at_k[1], round(result.calibration.frr, 2)
    (0.5, 0.5)
  """
  source = pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  return evaluate(source, **kwargs)
