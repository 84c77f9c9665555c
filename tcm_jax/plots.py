"""Figures: per-class utility curves against the distance threshold.

matplotlib is imported here only, so that the losses and metrics stay light.
"""

from __future__ import annotations

import numpy as np

from tcm_jax.metrics import CalibrationRange
from tcm_jax.metrics import UtilityCurves

MAX_CLASS_LINES = 200


def plot_utility_curves(curves: UtilityCurves,
                        calibration_range: CalibrationRange, path: str, *,
                        worst_classes=(), title: str | None = None) -> None:
  """Saves the paper's figure: one utility curve per class, range shaded.

  Each class's utility (F-beta of its TNR and TPR) is drawn against the
  distance threshold, with the mean curve, the 10-90% band over classes, the
  worst classes in red and the calibration range shaded. Beyond
  `MAX_CLASS_LINES` classes a random subset is drawn (the band and mean use
  all of them).

  Args:
    curves: utility curves over any thresholds (e.g. wider than the range).
    calibration_range: the range to shade.
    path: where to write the image (format from the extension).
    worst_classes: labels of classes to draw in red.
    title: figure title.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  thresholds, utility = curves.thresholds, curves.utility
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  low, high = calibration_range.distance
  far = calibration_range.far
  label = ('calibration range' if far is None
           else f'calibration range (FAR {far[0]:g} to {far[1]:g})')
  ax.axvspan(low, high, color='tab:blue', alpha=0.12, label=label)
  shown = np.arange(len(utility))
  if len(shown) > MAX_CLASS_LINES:
    shown = np.random.default_rng(0).choice(shown, MAX_CLASS_LINES,
                                            replace=False)
  for index in shown:
    ax.plot(thresholds, utility[index], color='0.55', lw=0.6, alpha=0.5)
  worst = np.isin(curves.classes, np.asarray(worst_classes))
  for n, index in enumerate(np.flatnonzero(worst)):
    ax.plot(thresholds, utility[index], color='tab:red', lw=1.0,
            label='worst classes' if n == 0 else None)
  ax.fill_between(thresholds, np.percentile(utility, 10, axis=0),
                  np.percentile(utility, 90, axis=0), color='tab:orange',
                  alpha=0.2, label='10-90% of classes')
  ax.plot(thresholds, utility.mean(axis=0), color='black', lw=2,
          label='mean over classes')
  ax.set_xlabel('distance threshold t (accept a pair when 1 - cos <= t)')
  ax.set_ylabel('utility (F-beta of TNR and TPR)')
  ax.set_ylim(0, 1.02)
  ax.set_xlim(thresholds[0], thresholds[-1])
  ax.set_title(title or f'Per-class utility, {len(utility)} classes')
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
