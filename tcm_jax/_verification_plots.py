"""The figures of one global threshold: DET curves, per-class FAR and FRR at
the threshold, and calibration transfer (published in `tcm_jax.plots`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tcm_jax._figures import finish
from tcm_jax._figures import new_axes
from tcm_jax.metrics import CalibrationTransfer
from tcm_jax.metrics import FoldTransfer
from tcm_jax.metrics import OperatingPoints
from tcm_jax.metrics import ThresholdCalibration


def _named(points, kind, name: str) -> dict:
  if isinstance(points, kind):
    return {None: points}
  if not isinstance(points, Mapping) or not points:
    raise TypeError(f'{name} must be one {kind.__name__} or a non-empty '
                    f'mapping of names to them, got {type(points).__name__}.')
  for key, value in points.items():
    if not isinstance(value, kind):
      raise TypeError(f'{name}[{key!r}] must be one {kind.__name__}, got '
                      f'{type(value).__name__}.')
  return dict(points)


def plot_det_curve(points: OperatingPoints | Mapping[str, OperatingPoints],
                   path: str | None = None, *, title: str | None = None,
                   ax=None):
  """The DET curve: the global FRR against the global FAR, both log-scaled.

  Each curve runs through every grid edge where the counts change (points
  with a rate of 0 cannot sit on a log axis and are left out); its global
  threshold at the target FAR is marked, the target drawn as a dotted
  vertical line, and the equal-error diagonal in grey. Lower left is better.

  Args:
    points: `metrics.operating_points` results: one, or a mapping of names
      to several (e.g. without and with TCM), one curve each.
    path: where to write the image; None: only return the figure.
    title: axes title.
    ax: draw into these axes (default: a new figure).

  Returns:
    The matplotlib figure.

  Raises:
    TypeError: `points` is neither an `OperatingPoints` nor a non-empty
      mapping of them.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics, plots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(20), 10)
    >>> z = rng.normal(size=(20, 16))[labels] + rng.normal(size=(200, 16))
    >>> fig = plots.plot_det_curve(metrics.operating_points(z, labels))
    >>> fig.axes[0].get_xscale(), fig.axes[0].get_yscale()
    ('log', 'log')
  """
  named = _named(points, OperatingPoints, 'points')
  fig, ax = new_axes(ax, path, (5.5, 4.5))
  targets = set()
  for i, (name, point) in enumerate(named.items()):
    colour = f'C{i % 10}'
    drawable = (point.far > 0) & (point.tar < 1)
    ax.plot(point.far[drawable], point.frr[drawable], color=colour, lw=1.5,
            label=f'{name}: EER {point.eer:.3f}' if name else
            f'EER {point.eer:.3f}')
    at = point.calibration
    if at.far > 0 and at.frr > 0:
      ax.plot([at.far], [at.frr], 'o', color=colour, ms=5)
    targets.add(at.target_far)
  for target in sorted(targets):
    ax.axvline(target, color='0.3', ls=':', lw=1,
               label=f'target FAR {target:g}')
  ax.plot([1e-9, 1], [1e-9, 1], color='0.75', lw=0.8, zorder=0)
  ax.set_xscale('log')
  ax.set_yscale('log')
  fars = [p.far[p.far > 0].min() for p in named.values() if np.any(p.far > 0)]
  frrs = [p.frr[p.frr > 0].min() for p in named.values() if np.any(p.frr > 0)]
  ax.set_xlim(min(fars, default=1e-6) / 2, 1)
  ax.set_ylim(min(frrs, default=1e-4) / 2, 1)
  ax.set_xlabel('global FAR (negative pairs accepted)')
  ax.set_ylabel('global FRR (positive pairs rejected)')
  ax.set_title(title or 'DET curve (the dot: the global threshold)')
  ax.legend(fontsize=8, loc='lower left')
  return finish(fig, path)


def plot_class_rates(calibration: ThresholdCalibration,
                     path: str | None = None, *, title: str | None = None,
                     ax=None):
  """Each class's FAR against its FRR at the one global threshold.

  One dot per evaluated class; the target FAR (dotted) and the global FAR
  and FRR reached (grey) as lines. A threshold consistent over classes puts
  every dot near the crossing of the grey lines. The FAR axis is linear up
  to a tenth of the target and logarithmic beyond (classes with no false
  accept sit at 0).

  Args:
    calibration: a `ThresholdCalibration` (`calibrate_threshold`,
      `Evaluation.calibration`, `OperatingPoints.calibration`, or a point of
      `calibration_transfer`).
    path: where to write the image; None: only return the figure.
    title: axes title.
    ax: draw into these axes (default: a new figure).

  Returns:
    The matplotlib figure.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics, plots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(20), 10)
    >>> z = rng.normal(size=(20, 16))[labels] + rng.normal(size=(200, 16))
    >>> points = metrics.operating_points(z, labels)
    >>> fig = plots.plot_class_rates(points.calibration)
    >>> len(fig.axes[0].collections[0].get_offsets())  # one dot per class
    20
  """
  if not isinstance(calibration, ThresholdCalibration):
    raise TypeError('calibration must be a ThresholdCalibration, got '
                    f'{type(calibration).__name__}.')
  fig, ax = new_axes(ax, path, (5.5, 4.5))
  ax.scatter(calibration.class_far, calibration.class_frr, s=12,
             color='tab:blue', alpha=0.6, label='classes')
  ax.axvline(calibration.target_far, color='0.2', ls=':', lw=1,
             label=f'target FAR {calibration.target_far:g}')
  ax.axvline(calibration.far, color='0.6', lw=1,
             label=f'global FAR {calibration.far:.2g}')
  ax.axhline(calibration.frr, color='0.6', lw=1, ls='--',
             label=f'global FRR {calibration.frr:.2g}')
  ax.set_xscale('symlog', linthresh=calibration.target_far / 10)
  ax.set_xlim(0, max(1.0, float(np.max(calibration.class_far, initial=0))))
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("class's FAR at the global threshold")
  ax.set_ylabel("class's FRR at the global threshold")
  ax.set_title(title or f'Per-class rates at d <= {calibration.threshold:.4f}')
  ax.legend(fontsize=8, loc='upper right')
  return finish(fig, path)


def plot_calibration_transfer(transfer: CalibrationTransfer | FoldTransfer,
                              path: str | None = None, *,
                              title: str | None = None, ax=None):
  """The FAR each target reached where the threshold was chosen and where it
  was used, against the target (log-log; the diagonal is on target).

  For a `CalibrationTransfer`: hollow circles on the calibration set, dots
  on the evaluated one, with a bar from the 10th to the 90th percentile of
  its classes' FAR. For a `FoldTransfer`: each fold's FAR on its held-out
  classes as small dots, their mean as a large one. A FAR of 0 is drawn at
  the axis's floor, a tenth of the smallest target.

  Args:
    transfer: `metrics.calibration_transfer` or `metrics.fold_transfer`.
    path: where to write the image; None: only return the figure.
    title: axes title.
    ax: draw into these axes (default: a new figure).

  Returns:
    The matplotlib figure.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics, plots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(40), 8)
    >>> z = rng.normal(size=(40, 16))[labels] + rng.normal(size=(320, 16))
    >>> fig = plots.plot_calibration_transfer(
    ...     metrics.fold_transfer(z, labels, folds=4))
    >>> fig.axes[0].get_xscale()
    'log'
  """
  if isinstance(transfer, CalibrationTransfer):
    kept = [(t, p) for t, p in zip(transfer.target_fars, transfer.points)
            if p is not None]
    targets = np.array([t for t, _ in kept])
  elif isinstance(transfer, FoldTransfer):
    targets = np.array(transfer.target_fars)
  else:
    raise TypeError('transfer must be a CalibrationTransfer or a FoldTransfer, '
                    f'got {type(transfer).__name__}.')
  fig, ax = new_axes(ax, path, (5.5, 4.5))
  floor = targets.min() / 10 if len(targets) else 1e-4
  lift = lambda v: np.maximum(np.asarray(v, float), floor)  # pylint: disable=unnecessary-lambda-assignment
  if isinstance(transfer, CalibrationTransfer):
    for i, (target, point) in enumerate(kept):
      low, high = np.percentile(point.class_far, [10, 90])
      ax.plot([target, target], lift([low, high]), color='tab:blue', lw=1,
              alpha=0.6, label='classes, 10-90%' if i == 0 else None)
    ax.scatter(targets, lift([p.calibration_far for _, p in kept]),
               facecolors='none', edgecolors='0.3', s=40,
               label='where chosen', zorder=3)
    ax.scatter(targets, lift([p.far for _, p in kept]), color='tab:blue',
               s=30, label='where used', zorder=3)
  else:
    for j, target in enumerate(targets):
      ax.scatter(np.full(len(transfer.far), target), lift(transfer.far[:, j]),
                 color='tab:blue', s=8, alpha=0.5,
                 label='each held-out fold' if j == 0 else None)
    ax.scatter(targets, lift(transfer.far.mean(axis=0)), color='tab:blue',
               s=40, label='mean over folds', zorder=3)
  span = [floor, 1.0]
  ax.plot(span, span, color='0.6', lw=0.8, label='on target', zorder=0)
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlim(floor, 1)
  ax.set_ylim(floor / 1.5, 1)
  ax.set_xlabel('target global FAR')
  ax.set_ylabel('global FAR reached')
  ax.set_title(title or 'Calibration transfer')
  ax.legend(fontsize=8, loc='upper left')
  return finish(fig, path)
