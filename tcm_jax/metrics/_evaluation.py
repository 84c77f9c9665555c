"""Every metric of an evaluation set in two streamed passes over its pairs.

Pass 1 ranks each query block (Recall@K, MAP@R, R-precision, in total and
summed by query class for per-class results and `bootstrap`) and histograms
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

from tcm_jax import _checks
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _opis
from tcm_jax.metrics import _one_pass
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _retrieval
from tcm_jax.metrics import _threshold
from tcm_jax.metrics._opis import curves_from_counts
from tcm_jax.metrics._opis import eps_opis_from_utility
from tcm_jax.metrics._opis import opis_from_utility
from tcm_jax.metrics._opis import UtilityCurves


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Every metric of an evaluation set.

  OPIS and eps-OPIS measure how much the classes' utility curves differ, not
  how high they are: a model whose every class has a utility of 0.1 is as
  "consistent" (OPIS 0) as one whose every class has 0.9. `mean_utility` and
  `mean_tpr` give the level that OPIS leaves out, over the same classes and
  thresholds, so that a low OPIS can be told apart from a uniformly poor
  model.

  Attributes:
    retrieval: Recall@K, MAP@R, R-precision and the excluded queries, with
      the per-class sums behind them.
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
    histograms: with `keep_histograms=True` (`engine='histogram'`), the
      per-class histograms of every pair it was read from (rows: the pair
      source's classes), for more thresholds or operating points without
      another pass; None otherwise.
  """
  retrieval: _retrieval.RetrievalMetrics
  curves: UtilityCurves
  opis: float
  eps_opis: float
  epsilon: float
  beta: float
  calibration: _threshold.ThresholdCalibration
  far_reached: tuple[float, float]
  excluded_classes: np.ndarray
  num_queries: int
  num_references: int
  histograms: _histograms.PairHistograms | None = dataclasses.field(
      default=None, repr=False, compare=False)

  @property
  def class_mean_utility(self) -> np.ndarray:
    """`[T]` each evaluated class's mean utility over the thresholds."""
    return np.mean(np.asarray(self.curves.utility, np.float64), axis=1)

  @property
  def class_mean_tpr(self) -> np.ndarray:
    """`[T]` each evaluated class's mean TPR over the thresholds."""
    return np.mean(np.asarray(self.curves.tpr, np.float64), axis=1)

  @property
  def mean_utility(self) -> float:
    """Mean utility over the evaluated classes and the range's thresholds.

    Each class weighs the same (as in OPIS), whatever its number of pairs.
    OPIS is the spread around this level and says nothing of the level
    itself: report the two together.
    """
    return float(np.mean(self.class_mean_utility))

  @property
  def mean_tpr(self) -> float:
    """Mean TPR (1 - FRR) over the evaluated classes and the thresholds.

    The thresholds span a range of global FAR, so this is the fraction of
    its genuine pairs a class accepts, on average over the operating range,
    each class weighing the same: with `mean_utility`, the level that OPIS
    (a spread) cannot show.
    """
    return float(np.mean(self.class_mean_tpr))

  def to_dict(self, per_class: bool = False) -> dict[str, Any]:
    """The scalar metrics, range and spreads as JSON-ready Python values.

    Args:
      per_class: also include `'per_class'`, each class's retrieval metrics
        and mean utility and TPR (lists as long as the number of classes:
        large for large sets, hence off by default).

    Returns:
      A dict of Python scalars, lists and dicts.
    """
    calibration_range = self.curves.calibration_range
    result = {
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
        'mean_utility': self.mean_utility,
        'mean_tpr': self.mean_tpr,
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
    if per_class:
      retrieval_rows = self.retrieval.per_class()
      result['per_class'] = {
          'retrieval': {
              'classes': self.retrieval.classes.tolist(),
              'num_queries': retrieval_rows.pop('num_queries').tolist(),
              **{name: values.tolist()
                 for name, values in retrieval_rows.items()},
          },
          'utility': {
              'classes': self.curves.classes.tolist(),
              'mean_utility': self.class_mean_utility.tolist(),
              'mean_tpr': self.class_mean_tpr.tolist(),
          },
      }
    return result


@functools.partial(
    jax.jit,
    static_argnames=('num_neighbours', 'ks', 'exclude_self', 'num_classes'))
def _first_pass_block(queries, refs, query_ids, ref_ids, row_valid, offset,
                      num_relevant, *, num_neighbours, ks, exclude_self,
                      num_classes):
  histogram = _pair_counts.negative_histogram_block(
      queries, refs, query_ids, ref_ids, row_valid, offset,
      exclude_self=exclude_self)
  sums = _retrieval.retrieval_block(
      queries, refs, query_ids, ref_ids, row_valid, offset, num_relevant,
      num_neighbours=num_neighbours, ks=ks, exclude_self=exclude_self,
      num_classes=num_classes)
  return histogram, sums


def _two_pass_progress(progress):
  if progress is None:
    return None, None
  first = lambda done, total: progress(done, 2 * total)
  second = lambda done, total: progress(total + done, 2 * total)
  return first, second


def check_options(*, far_range=(1e-3, 1e-1), distance_range=None,
                  beta: float = 1.0, num_thresholds: int = 101,
                  epsilon: float = 0.1, target_far: float = 1e-2,
                  engine: str = 'exact', product: str | None = None) -> None:
  """`evaluate_source`'s options, checked before there is any data.

  What `evaluate_source` checks first, for a caller that wants the error
  before it loads or computes anything (a command line checks its flags).

  Raises:
    ValueError: an option out of its range, named (e.g. `epsilon must be in
      (0, 1), got 2.0.`), or more thresholds than the range can hold.
    TypeError: an option of the wrong type.

  Examples:
    >>> from tcm_jax.metrics import advanced
    >>> advanced.check_options(far_range=(1e-3, 1e-1), epsilon=0.1)
    >>> advanced.check_options(epsilon=2.0)
    Traceback (most recent call last):
    ...
    ValueError: epsilon must be in (0, 1), got 2.0.
  """
  if distance_range is None:
    _threshold.check_far_range(far_range)
  else:
    _checks.check_range('distance_range', distance_range, -1.0, 3.0)
  _checks.check_int('num_thresholds', num_thresholds, 2)
  _threshold.check_num_thresholds_before(num_thresholds, distance_range)
  _checks.check_fraction('epsilon', epsilon)
  _checks.check_far('target_far', target_far)
  _checks.check_positive('beta', beta)
  _checks.check_choice('engine', engine, ENGINES)
  if engine == 'histogram':
    if distance_range is not None:
      _histograms.snap_thresholds(*_histograms.check_range(distance_range),
                                  num_thresholds, range_name='distance_range')
    elif num_thresholds > _histograms.LAST_BIN + 1:
      raise ValueError(
          f'num_thresholds={num_thresholds} is more than the '
          f"{_histograms.LAST_BIN + 1} edges of engine='histogram''s grid "
          f"(2**-14 apart over every distance): use num_thresholds <= "
          f"{_histograms.LAST_BIN + 1}, or engine='exact'.")
  if product is not None:
    _checks.check_choice('product', product, PRODUCTS)


ENGINES = ('exact', 'histogram')
PRODUCTS = ('numpy', 'jax')


def evaluate_source(source: _pair_counts.PairSource, *,
                    far_range=(1e-3, 1e-1), distance_range=None,
                    beta: float = 1.0, num_thresholds: int = 101,
                    epsilon: float = 0.1, ks: Sequence[int] = (1, 2, 4, 8),
                    target_far: float = 1e-2,
                    progress: _pair_counts.ProgressFn | None = None,
                    engine: str = 'exact', product: str | None = None,
                    keep_histograms: bool = False) -> Evaluation:
  """Every metric of a pair source; see `evaluate_embeddings`.

  `evaluate_embeddings` and `evaluate_similarity` are this function of the
  source they build; build the source yourself to evaluate it more than
  once (e.g. over a wider range of thresholds for a figure, with
  `class_counts`).

  Args:
    source: the pairs, from `source_from_embeddings` or
      `source_from_similarity`.
    far_range: see `evaluate_embeddings`.
    distance_range: see `evaluate_embeddings`.
    beta: see `evaluate_embeddings`.
    num_thresholds: see `evaluate_embeddings`.
    epsilon: see `evaluate_embeddings`.
    ks: see `evaluate_embeddings`.
    target_far: see `evaluate_embeddings`.
    progress: `fn(done, total)` called after each block of both passes.
    engine: `'exact'` (two passes: thresholds anywhere, counted exactly) or
      `'histogram'` (one pass: per-class distance histograms on a grid of
      2**-14, thresholds moved to its nearest edges; see
      `tcm_jax.metrics._one_pass`).
    product: with `engine='histogram'`, where the similarities are computed
      and counted: `'numpy'` (BLAS, the default on CPU) or `'jax'` (the
      default device, the default elsewhere).
    keep_histograms: with `engine='histogram'`, bin every pair (no cut) and
      keep the histograms in `Evaluation.histograms` (memory: classes x
      33,026 x 2 counters).

  Returns:
    `Evaluation`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import advanced
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(10), 20)
    >>> z = rng.normal(size=(10, 32))[labels] + rng.normal(size=(200, 32))
    >>> source = advanced.source_from_embeddings(z, labels, block_size=64)
    >>> result = advanced.evaluate_source(source, ks=(1,))
    >>> result.retrieval.recall_at_k[1] > 0.9, result.num_queries
    (True, 200)
  """
  check_options(far_range=far_range, distance_range=distance_range,
                beta=beta, num_thresholds=num_thresholds, epsilon=epsilon,
                target_far=target_far, engine=engine, product=product)
  mask = _pair_counts.check_enough_classes(source)
  if engine == 'histogram':
    return _from_histograms(
        source, mask, far_range=far_range, distance_range=distance_range,
        beta=beta, num_thresholds=num_thresholds, epsilon=epsilon, ks=ks,
        target_far=target_far, progress=progress, product=product,
        keep=keep_histograms)
  if keep_histograms:
    raise ValueError("keep_histograms=True needs engine='histogram' (the "
                     "exact engine keeps no histogram).")
  first_progress, second_progress = _two_pass_progress(progress)

  retrieval_plan = _retrieval.plan(source, ks)
  ref_ids = jnp.asarray(source.ref_ids)
  histogram = np.zeros(_pair_counts.FINE_BINS, np.int64)
  sums = np.zeros(len(retrieval_plan.ks) + 3, np.float64)
  class_sums = np.zeros((source.num_classes, len(sums)), np.float64)
  for block in _pair_counts.blocks(source, first_progress):
    block_histogram, (block_sums, block_class_sums) = _first_pass_block(
        block.queries, block.refs, block.query_ids, ref_ids, block.row_valid,
        block.offset, retrieval_plan.block_relevant(block),
        num_neighbours=retrieval_plan.num_neighbours, ks=retrieval_plan.ks,
        exclude_self=source.exclude_self, num_classes=source.num_classes)
    histogram += np.asarray(block_histogram)
    sums += np.asarray(block_sums, np.float64)
    class_sums += np.asarray(block_class_sums, np.float64)

  calibration_range = _threshold.resolve_range(far_range, distance_range,
                                                  histogram)
  thresholds = _threshold.range_thresholds(calibration_range, num_thresholds)
  global_threshold = _threshold.far_quantile(histogram, target_far)
  counts = _pair_counts.class_counts(source, thresholds, global_threshold,
                                    second_progress)
  return _assemble(source, mask, counts, calibration_range, beta, epsilon,
                   target_far, _retrieval.summarize(
                       source, retrieval_plan, sums, class_sums))


def _assemble(source, mask, counts, calibration_range, beta, epsilon,
              target_far, retrieval, compiled=False) -> Evaluation:
  """The `Evaluation` of per-class counts and retrieval sums (`compiled`:
  the utility, OPIS and eps-OPIS each by one compiled program)."""
  curves = curves_from_counts(counts, mask, source.classes, beta,
                              calibration_range, compiled=compiled)
  opis = _opis.compiled_opis if compiled else opis_from_utility
  eps_opis = _opis.compiled_eps_opis if compiled else eps_opis_from_utility
  negatives = max(int(counts.neg_total.sum()), 1)
  query_classes = np.zeros(source.num_classes, bool)
  query_classes[source.query_ids] = True
  return Evaluation(
      retrieval=retrieval,
      curves=curves,
      opis=float(opis(curves.utility)),
      eps_opis=float(eps_opis(curves.utility, epsilon=epsilon)),
      epsilon=float(epsilon),
      beta=float(beta),
      calibration=_threshold.calibrate(counts, target_far, mask),
      far_reached=(float(counts.neg_accepted[:, 0].sum() / negatives),
                   float(counts.neg_accepted[:, -1].sum() / negatives)),
      excluded_classes=source.classes[query_classes & ~mask],
      num_queries=source.num_queries,
      num_references=source.num_refs,
  )


def default_product() -> str:
  """Where the one pass runs unless told: NumPy on CPU, else the device."""
  return 'numpy' if jax.default_backend() == 'cpu' else 'jax'


def _from_histograms(source, mask, *, far_range, distance_range, beta,
                     num_thresholds, epsilon, ks, target_far, progress,
                     product, keep=False) -> Evaluation:
  """`evaluate_source` with `engine='histogram'`: one pass (`keep`: with no
  cut, the histograms kept)."""
  product = product or default_product()
  retrieval_plan = _retrieval.plan(source, ks)
  largest_far = target_far if distance_range is not None else max(
      target_far, float(far_range[1]))
  cut = _histograms.LAST_BIN if keep else _one_pass.choose_cut(
      source, largest_far,
      None if distance_range is None else float(distance_range[1]))
  _one_pass.check_histogram_size(source, cut)
  run = _one_pass.numpy_pass if product == 'numpy' else _one_pass.jax_pass
  result = run(source, retrieval_plan, cut, progress)
  try:
    counts, calibration_range = _histograms.counts_at_edges(
        result.histograms, far_range, distance_range, num_thresholds,
        target_far)
  except _histograms.BeyondCutError:  # the sample misled the cut: no cut
    del result
    _one_pass.check_histogram_size(source, _histograms.LAST_BIN, redone=True)
    result = run(source, retrieval_plan, _histograms.LAST_BIN, progress)
    counts, calibration_range = _histograms.counts_at_edges(
        result.histograms, far_range, distance_range, num_thresholds,
        target_far)
  evaluation = _assemble(source, mask, counts, calibration_range, beta,
                         epsilon, target_far, _retrieval.summarize(
                             source, retrieval_plan, result.sums,
                             result.class_sums), compiled=True)
  return (dataclasses.replace(evaluation, histograms=result.histograms)
          if keep else evaluation)


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
      2**26 / M on accelerators; not used by `engine='histogram'` with
      `product='numpy'`, whose tiles are 64 rows).
    **kwargs: `far_range` ((1e-3, 1e-1)), `distance_range` (None: explicit
      distances, overriding `far_range`), `beta` (1.0), `num_thresholds`
      (101), `epsilon` (0.1), `ks` ((1, 2, 4, 8)), `target_far` (1e-2, the
      global threshold's FAR), `progress` (a `fn(done, total)` called after
      each block), `engine` (`'exact'`: two passes, thresholds anywhere;
      `'histogram'`: one pass, per-class distance histograms, thresholds on
      a grid of 2**-14, several times faster on CPU), `product` (with
      `'histogram'`: `'numpy'` or `'jax'`, by default NumPy's BLAS on CPU and
      the device elsewhere), `keep_histograms` (False; with `'histogram'`:
      every pair binned, no cut, the histograms kept in
      `Evaluation.histograms`).

  Returns:
    `Evaluation`.

  Raises:
    ValueError: NaN or infinite embeddings (with the count of bad rows),
      labels of the wrong length, no query with a positive, fewer than two
      classes with two samples, an empty or reversed range,
      `num_thresholds < 2` or more than the range holds, `epsilon` outside
      (0, 1).
    CalibrationRangeError: the negative pairs' distances are so
      concentrated (a collapsed embedding) that the calibration range is
      empty.
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
  source = _pair_counts.source_from_embeddings(
      embeddings, labels, ref_embeddings, ref_labels, block_size=block_size)
  return evaluate_source(source, **kwargs)


def evaluate_similarity(similarity, labels, ref_labels=None, *,
                        block_size: int | None = None,
                        **kwargs) -> Evaluation:
  """Every metric of a `[Q, R]` similarity matrix.

  Args:
    similarity: `[Q, R]` cosine similarities, in [-1, 1] (within 0.01, the
      rounding of a bfloat16 or TF32 product): a matrix beyond that, such as
      dot products of unnormalised embeddings, is refused.
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
  source = _pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  return evaluate_source(source, **kwargs)
