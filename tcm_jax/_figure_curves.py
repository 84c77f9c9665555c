"""The curves of a report's figure: utility over the whole distance range."""

from __future__ import annotations

import numpy as np

from tcm_jax import _verification_report
from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax.metrics import advanced

#: Thresholds of the figure's curves over the distance range [0, 2]: 0.01
#: apart.
PLOT_THRESHOLDS = 201


def plot_curves(evaluation: metrics.Evaluation, embeddings, labels,
                ref_embeddings=None, ref_labels=None, *,
                block_size: int | None = None,
                progress=None) -> metrics.UtilityCurves:
  """Utility curves over the whole distance range [0, 2], for the figure.

  `PLOT_THRESHOLDS` thresholds from 0 to 2 whatever the run, so that the
  figures of two runs share their x-axis (`plots.plot_utility_curves`
  draws [0, 2] and shades the calibration range). The curves' calibration
  range is the evaluation's.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics, report
    >>> labels = np.repeat(np.arange(4), 10)
    >>> z = np.random.default_rng(0).normal(size=(40, 8)) + np.eye(8)[labels]
    >>> wide = report.plot_curves(metrics.evaluate_embeddings(z, labels), z,
    ...                           labels)
    >>> wide.utility.shape, wide.thresholds[[0, -1]].tolist()
    ((4, 201), [0.0, 2.0])
  """
  source = advanced.source_from_embeddings(
      embeddings, labels, ref_embeddings, ref_labels, block_size=block_size)
  return wide_curves(source, evaluation, progress)


def wide_curves(source: advanced.PairSource, evaluation: metrics.Evaluation,
                 progress) -> metrics.UtilityCurves:
  """The figure's curves: off `evaluation.histograms` when kept (thresholds
  on the grid's nearest edges), else counted in one more pass."""
  high = evaluation.curves.calibration_range.distance[1]
  thresholds = advanced.thresholds_between(*plots.DISTANCE_AXIS,
                                           PLOT_THRESHOLDS)
  if evaluation.histograms is not None:
    counts = _verification_report.counts_from_histograms(
        evaluation.histograms, thresholds, high)
  else:
    counts = advanced.class_counts(source, thresholds, high, progress)
  mask = np.isin(source.classes, evaluation.curves.classes)
  return advanced.curves_from_counts(counts, mask, source.classes,
                                     evaluation.beta,
                                     evaluation.curves.calibration_range)
