"""Per-class utility curves, OPIS and eps-OPIS: threshold inconsistency.

For a class `c`, `TPR_c(t)` is the fraction of its positive pairs accepted at
distance threshold `t` and `TNR_c(t)` the fraction of its negative pairs
(its queries against every other class) rejected. Its utility is the F-beta
score of the two (beta weights sensitivity, as recall in F-beta):

.. math::

  U_c(t) = (1 + \\beta^2) \\frac{TNR_c(t) \\, TPR_c(t)}
                                {\\beta^2 \\, TNR_c(t) + TPR_c(t)}
  \\quad (0/0 := 0)

OPIS is the across-class variance of `U_c(t)`, averaged over the thresholds
of the calibration range; eps-OPIS the squared gap between the mean utility
of the worst `ceil(eps * T)` classes (by mean utility over the range) and the
rest, averaged likewise. Lower is more consistent; OPIS is at most 0.25.

References:
  Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
  Learning", ICLR 2024, https://arxiv.org/abs/2307.04047
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _threshold


def utility_from_rates(tpr: jax.typing.ArrayLike, tnr: jax.typing.ArrayLike, *,
                       beta: float = 1.0) -> jax.Array:
  """F-beta utility of specificity and sensitivity, 0 where both are 0.

  Args:
    tpr: true-positive rates (sensitivity), any shape.
    tnr: true-negative rates (specificity), the same shape.
    beta: weight of sensitivity, > 0.

  Returns:
    Utilities in [0, 1].

  Examples:
    >>> from tcm_jax.metrics import utility_from_rates
    >>> print(utility_from_rates([1.0, 0.5, 0.0], [1.0, 1.0, 0.0]))
    [1.         0.6666667  0.        ]
  """
  _checks.check_positive('beta', beta)
  tpr, tnr = jnp.asarray(tpr, jnp.float32), jnp.asarray(tnr, jnp.float32)
  # Weights scaled so that neither can overflow, for any finite beta.
  if beta >= 1:
    w_tnr, w_tpr = 1.0, 1.0 / (beta * beta)
  else:
    w_tnr, w_tpr = beta * beta, 1.0
  denominator = w_tnr * tnr + w_tpr * tpr
  safe = jnp.where(denominator > 0, denominator, 1.0)
  return jnp.where(denominator > 0, (w_tnr + w_tpr) * tnr * tpr / safe, 0.0)


def _class_weights(utility: jax.Array, where) -> jax.Array:
  if where is None:
    return jnp.ones(utility.shape[0], jnp.float32)
  return jnp.asarray(where, jnp.float32)


def opis_from_utility(utility: jax.typing.ArrayLike,
                      where: jax.typing.ArrayLike | None = None) -> jax.Array:
  """Mean over thresholds of the across-class variance of the utility.

  Args:
    utility: `[classes, thresholds]` utility curves.
    where: optional `[classes]` boolean mask of the classes evaluated.

  Returns:
    Scalar OPIS (population variance; 0 when all curves coincide).

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.metrics import opis_from_utility
    >>> print(opis_from_utility(jnp.array([[1.0, 1.0], [0.0, 0.0]])))
    0.25
  """
  utility = jnp.asarray(utility, jnp.float32)
  weights = _class_weights(utility, where)[:, None]
  count = jnp.maximum(jnp.sum(weights), 1.0)
  mean = jnp.sum(weights * utility, axis=0) / count
  variance = jnp.sum(weights * (utility - mean) ** 2, axis=0) / count
  return jnp.mean(variance)


def eps_opis_from_utility(utility: jax.typing.ArrayLike, *,
                          epsilon: float = 0.1,
                          where: jax.typing.ArrayLike | None = None
                          ) -> jax.Array:
  """Squared gap between the worst `ceil(epsilon * T)` classes and the rest.

  Classes are ranked by mean utility over the thresholds, ties by class
  index; the worst group has at least one and at most `T - 1` classes.
  `epsilon * T` within 1e-3 of an integer counts as that integer. With fewer
  than two classes there is no gap: 0.

  Args:
    utility: `[classes, thresholds]` utility curves.
    epsilon: fraction of classes in the worst group, in (0, 1).
    where: optional `[classes]` boolean mask of the classes evaluated
      (`T` of them).

  Returns:
    Scalar eps-OPIS.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.metrics import eps_opis_from_utility
    >>> u = jnp.array([[0.9, 0.9], [0.8, 0.8], [0.2, 0.4]])
    >>> # Worst: class 2. ((0.85 - 0.2)**2 + (0.85 - 0.4)**2) / 2
    >>> print(f'{eps_opis_from_utility(u, epsilon=0.2):.4f}')
    0.3125
  """
  utility = jnp.asarray(utility, jnp.float32)
  weights = _class_weights(utility, where)
  evaluated = jnp.sum(weights)
  num_worst = jnp.clip(jnp.ceil(epsilon * evaluated - 1e-3), 1,
                       jnp.maximum(evaluated - 1, 1))
  class_mean = jnp.where(weights > 0, jnp.mean(utility, axis=1), jnp.inf)
  rank = jnp.argsort(jnp.argsort(class_mean, stable=True), stable=True)
  worst = (weights > 0) & (rank < num_worst)
  rest = (weights > 0) & ~worst
  group_mean = lambda group: (
      jnp.sum(jnp.where(group[:, None], utility, 0.0), axis=0)
      / jnp.maximum(jnp.sum(group), 1))
  gap = jnp.mean((group_mean(worst) - group_mean(rest)) ** 2)
  return jnp.where(evaluated >= 2, gap, 0.0)


@dataclasses.dataclass(frozen=True)
class UtilityCurves:
  """Per-class utility over the thresholds of the calibration range.

  Attributes:
    thresholds: `[k]` distance thresholds.
    classes: `[T]` labels of the evaluated classes.
    tpr: `[T, k]` true-positive rates (exact counts).
    tnr: `[T, k]` true-negative rates.
    utility: `[T, k]` F-beta utilities.
    calibration_range: the range the thresholds span.
  """
  thresholds: np.ndarray
  classes: np.ndarray
  tpr: np.ndarray
  tnr: np.ndarray
  utility: np.ndarray
  calibration_range: _threshold.CalibrationRange


# One compiled program each, for callers that evaluate many times or want
# no eager compiling (a second in a fresh process): the one-pass engine.
compiled_utility = jax.jit(utility_from_rates, static_argnames=('beta',))
compiled_opis = jax.jit(opis_from_utility)
compiled_eps_opis = jax.jit(eps_opis_from_utility)


def curves_from_counts(counts: _pair_counts.ClassCounts, class_mask: np.ndarray,
                       classes: np.ndarray, beta: float,
                       calibration_range: _threshold.CalibrationRange,
                       compiled: bool = False) -> UtilityCurves:
  """Utility curves of the evaluated classes from exact pair counts.

  Args:
    counts: per-class counts, e.g. from `class_counts`.
    class_mask: `[classes]` boolean mask of the classes to keep.
    classes: `[classes]` labels of the dense class ids (`PairSource.classes`).
    beta: F-beta weight of sensitivity.
    calibration_range: the range the curves are reported over.
    compiled: the utility by one compiled program (`compiled_utility`)
      rather than eagerly (equal to within float32 rounding).

  Returns:
    `UtilityCurves` of the classes in `class_mask`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> from tcm_jax.metrics import advanced
    >>> source = advanced.source_from_embeddings(
    ...     [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0]], [0, 0, 1, 1])
    >>> thresholds = advanced.thresholds_between(0.1, 0.4, 3)
    >>> counts = advanced.class_counts(source, thresholds, 1.0)
    >>> curves = advanced.curves_from_counts(
    ...     counts, np.array([True, True]), source.classes, 1.0,
    ...     metrics.CalibrationRange(distance=(0.1, 0.4), far=None))
    >>> print(curves.tpr)  # class 0's pairs are at d = 0.2, class 1's at 0
    [[0. 1. 1.]
     [1. 1. 1.]]
  """
  _checks.check_positive('beta', beta)
  pos_total = np.maximum(counts.pos_total[class_mask], 1)[:, None]
  neg_total = np.maximum(counts.neg_total[class_mask], 1)[:, None]
  tpr = counts.pos_accepted[class_mask] / pos_total
  tnr = 1.0 - counts.neg_accepted[class_mask] / neg_total
  return UtilityCurves(
      thresholds=counts.thresholds, classes=classes[class_mask], tpr=tpr,
      tnr=tnr, utility=np.asarray((compiled_utility if compiled else
                                   utility_from_rates)(
                                       tpr, tnr, beta=float(beta))),
      calibration_range=calibration_range)


def utility_curves(similarity, labels, ref_labels=None, *,
                   far_range=(1e-3, 1e-1), distance_range=None,
                   beta: float = 1.0, num_thresholds: int = 101,
                   block_size: int | None = None) -> UtilityCurves:
  """Per-class utility curves of a similarity matrix over the calibration range.

  Args:
    similarity: `[Q, R]` cosine similarities.
    labels: `[Q]` integer class ids of the queries.
    ref_labels: `[R]` class ids of the references; default: the queries
      (self pairs excluded).
    far_range: `(far_lo, far_hi)`: the calibration range is where the global
      FAR of all negative pairs goes from `far_lo` to `far_hi`.
    distance_range: `(t_lo, t_hi)` explicit distances; overrides `far_range`.
    beta: F-beta weight of sensitivity.
    num_thresholds: thresholds evenly spaced over the range, ends included.
    block_size: query rows per block (default: adapted to R).

  Returns:
    `UtilityCurves` of the classes with a positive and a negative pair.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
    ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
    >>> c = metrics.utility_curves(s, [0, 0, 1, 1], distance_range=(0.5, 0.7),
    ...                            num_thresholds=3)
    >>> print(c.thresholds, c.tpr[1], c.tnr[1])  # class 1: positives at 0.7
    [0.5 0.6 0.7] [0. 0. 1.] [1.   0.75 0.5 ]
  """
  source = _pair_counts.source_from_similarity(
      similarity, labels, ref_labels, block_size=block_size)
  return _curves(source, far_range, distance_range, beta, num_thresholds)


def _curves(source, far_range, distance_range, beta, num_thresholds):
  if distance_range is not None:
    distance_range = _checks.check_range('distance_range', distance_range,
                                         -1.0, 3.0)
  _threshold.check_num_thresholds_before(num_thresholds, distance_range)
  mask = _pair_counts.check_enough_classes(source)
  histogram = (None if distance_range is not None
               else _pair_counts.negative_histogram(source))
  calibration = _threshold.resolve_range(far_range, distance_range,
                                            histogram)
  thresholds = _threshold.range_thresholds(calibration, num_thresholds)
  counts = _pair_counts.class_counts(source, thresholds, thresholds[-1])
  return curves_from_counts(counts, mask, source.classes, beta, calibration)


def opis(similarity, labels, ref_labels=None, **kwargs) -> float:
  """OPIS of a similarity matrix: see `utility_curves` for the arguments.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
    ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
    >>> print(f'{metrics.opis(s, [0, 0, 1, 1], distance_range=(0.5, 0.7)):.4f}')
    0.2147
  """
  curves = utility_curves(similarity, labels, ref_labels, **kwargs)
  return float(opis_from_utility(curves.utility))


def eps_opis(similarity, labels, ref_labels=None, *, epsilon: float = 0.1,
             **kwargs) -> float:
  """eps-OPIS of a similarity matrix: see `utility_curves` for the arguments.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
    ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
    >>> e = metrics.eps_opis(s, [0, 0, 1, 1], distance_range=(0.5, 0.7))
    >>> print(f'{e:.4f}')  # two classes: 4 * OPIS
    0.8588
  """
  _checks.check_fraction('epsilon', epsilon)
  curves = utility_curves(similarity, labels, ref_labels, **kwargs)
  return float(eps_opis_from_utility(curves.utility, epsilon=epsilon))
