"""Figures of the reports and notebooks: utility curves, OPIS against R@1, densities,
DET curves, per-class FAR and FRR, calibration transfer.

Every function returns the figure it drew. With `ax` (a matplotlib Axes) it
draws there, into your figure; with `path` it draws a new figure and writes
it there (format from the extension) without going through pyplot, so
scripts neither change the backend nor accumulate open figures; with neither
it draws a new pyplot figure, which a notebook shows (end the cell with
`plt.show()` or an assignment, or Jupyter shows it twice). matplotlib is
imported here only, so that the losses and metrics stay light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tcm_jax import _checks
from tcm_jax._figures import finish as _finish
from tcm_jax._figures import new_axes as _figure
from tcm_jax._verification_plots import plot_calibration_transfer
from tcm_jax._verification_plots import plot_class_rates
from tcm_jax._verification_plots import plot_det_curve
from tcm_jax.metrics import CalibrationRange
from tcm_jax.metrics import UtilityCurves

__all__ = [
    'embedding_density',
    'plot_calibration_transfer',
    'plot_class_rates',
    'plot_det_curve',
    'plot_embedding_density',
    'plot_opis_vs_recall',
    'plot_utility_curves',
]

MAX_CLASS_LINES = 200
# The x-axis of every utility-curve figure: the whole distance range, so
# that the figures of two runs can be laid side by side.
DISTANCE_AXIS = (0.0, 2.0)


def plot_utility_curves(curves: UtilityCurves,
                        calibration_range: CalibrationRange,
                        path: str | None = None, *, worst_classes=(),
                        title: str | None = None, ax=None,
                        xlim: tuple[float, float] = DISTANCE_AXIS):
  """The paper's figure: one utility curve per class, the range shaded.

  Each class's utility (F-beta of its TNR and TPR) is drawn against the
  distance threshold, with the mean curve, the 10-90% band over classes, the
  worst classes in red and the calibration range shaded. Beyond
  `MAX_CLASS_LINES` classes a random subset is drawn (the band and mean use
  all of them). The x-axis is the whole distance range [0, 2]
  (`DISTANCE_AXIS`) whatever the curves span, so that two runs' figures
  compare side by side; the reports draw curves over all of it
  (`tcm_jax.report.plot_curves`).

  Args:
    curves: utility curves over any thresholds (e.g. wider than the range).
    calibration_range: the range to shade.
    path: where to write the image; None: only return the figure.
    worst_classes: labels of classes to draw in red.
    title: axes title: say which run or file, and whether TCM was on
      (default: the number of classes).
    ax: draw into these axes (default: a new figure).
    xlim: the x-axis limits (default: [0, 2], for comparable figures).

  Returns:
    The matplotlib figure.

  Examples:
    >>> import numpy as np
    >>> import tcm_jax
    >>> from tcm_jax import metrics, plots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(4), 10)
    >>> z = rng.normal(size=(4, 8))[labels] + rng.normal(size=(40, 8))
    >>> s = tcm_jax.cosine_similarity(z, z)
    >>> curves = metrics.utility_curves(s, labels)
    >>> fig = plots.plot_utility_curves(curves, curves.calibration_range)
    >>> len(fig.axes[0].lines)  # four classes and the mean
    5
  """
  xlim = _checks.check_range('xlim', xlim, -1.0, 3.0)
  fig, ax = _figure(ax, path, (7.5, 4.5))
  thresholds, utility = curves.thresholds, curves.utility
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
  ax.set_xlim(*xlim)
  ax.set_title(title or f'Per-class utility, {len(utility)} classes')
  ax.legend(loc='lower right', fontsize=8)
  return _finish(fig, path)


def plot_opis_vs_recall(runs: Sequence[Mapping[str, Any]],
                        path: str | None = None, *, title: str | None = None,
                        ax=None):
  """OPIS against Recall@1 across runs: each base loss with and without TCM.

  One colour per base loss; circles are runs without TCM, stars with it; an
  arrow goes from each loss's mean without TCM to its mean with TCM. Lower
  and to the right is better: more consistent thresholds, better retrieval.

  Args:
    runs: one mapping per run with `loss` (the base loss's name), `tcm`
      (bool), `recall_at_1` and `opis`.
    path: where to write the image; None: only return the figure.
    title: axes title.
    ax: draw into these axes (default: a new figure).

  Returns:
    The matplotlib figure.

  Raises:
    ValueError: `runs` is empty, a run lacks one of the keys, its `tcm` is
      not a bool, or its metrics are not finite.

  Examples:
    >>> from tcm_jax import plots
    >>> runs = [dict(loss='arcface', tcm=t, recall_at_1=r, opis=o)
    ...         for t, r, o in [(False, .80, .020), (True, .82, .010)]]
    >>> fig = plots.plot_opis_vs_recall(runs)
    >>> len(fig.axes[0].collections)  # the circles and the stars
    2
  """
  runs = list(runs)
  if not runs:
    raise ValueError('runs is empty: give at least one run.')
  for i, run in enumerate(runs):
    missing = {'loss', 'tcm', 'recall_at_1', 'opis'} - set(run)
    if missing:
      raise ValueError(f'runs[{i}] lacks {sorted(missing)}; it has '
                       f'{sorted(run)}.')
    _checks.check_type(f"runs[{i}]['tcm']", run['tcm'], (bool, np.bool_),
                       'True or False')
    if not all(np.isfinite(float(run[k])) for k in ('recall_at_1', 'opis')):
      raise ValueError(f'runs[{i}] has a non-finite recall_at_1 or opis: '
                       f'{run["recall_at_1"]}, {run["opis"]}.')
  fig, ax = _figure(ax, path, (6.5, 4.5))
  names = list(dict.fromkeys(run['loss'] for run in runs))
  colours = {name: f'C{i % 10}' for i, name in enumerate(names)}
  for name in names:
    means = {}
    for tcm, marker, size in ((False, 'o', 30), (True, '*', 90)):
      group = [r for r in runs if r['loss'] == name and bool(r['tcm']) == tcm]
      if not group:
        continue
      x = np.array([r['recall_at_1'] for r in group], dtype=float)
      y = np.array([r['opis'] for r in group], dtype=float)
      ax.scatter(x, y, marker=marker, s=size, color=colours[name], alpha=0.75,
                 label=f'{name}{" + TCM" if tcm else ""}')
      means[tcm] = (x.mean(), y.mean())
    if len(means) == 2:
      ax.annotate('', xy=means[True], xytext=means[False],
                  arrowprops=dict(arrowstyle='->', color=colours[name],
                                  lw=1.2))
  ax.set_xlabel('Recall@1 (higher is better)')
  ax.set_ylabel('OPIS (lower is better)')
  ax.set_title(title or 'Threshold consistency against accuracy')
  ax.legend(fontsize=7, ncol=2, loc='best')
  return _finish(fig, path)


def _unit(embeddings) -> np.ndarray:
  z = np.asarray(embeddings, dtype=np.float64)
  norms = np.linalg.norm(z, axis=-1, keepdims=True)
  bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
  if bad.any():
    raise ValueError('embeddings must be finite and non-zero to be placed on '
                     f'the circle or sphere; {int(bad.sum())} of {len(z)} '
                     'rows are not.')
  return z / norms


def embedding_density(embeddings, labels, *, bins: int = 180,
                      smoothing: float = 0.0):
  """Per-class densities of 2-D or 3-D embeddings on the circle or sphere.

  Embeddings are L2-normalised (compared by cosine). In 2-D the density is
  over the angle, `bins` bins on [-pi, pi), optionally smoothed with a
  Gaussian kernel that wraps around the circle; in 3-D over longitude
  (`bins` bins on [-pi, pi)) and latitude (`bins // 2` bins of equal area:
  uniform in sin(latitude)).

  Args:
    embeddings: `[N, 2]` or `[N, 3]` embeddings.
    labels: `[N]` class labels.
    bins: angle bins (longitude bins in 3-D).
    smoothing: 2-D only: the kernel's standard deviation in degrees (0: the
      plain histogram).

  Returns:
    `(classes, density)`: the sorted labels `[C]` and `[C, bins]` (2-D) or
    `[C, bins // 2, bins]` (3-D) densities, each class's summing to 1.

  Raises:
    ValueError: not 2 or 3 dimensions, labels of the wrong length, no rows,
      rows that cannot be normalised, fewer than 2 bins, or smoothing
      negative or given for 3-D embeddings.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import plots
    >>> z = np.array([[1., 0.], [1., .01], [-1., 0.], [-1., -.01]])
    >>> classes, density = plots.embedding_density(z, [0, 0, 1, 1], bins=4)
    >>> classes, density  # class 0 near angle 0, class 1 near +-pi
    (array([0, 1]), array([[0. , 0. , 1. , 0. ],
           [0.5, 0. , 0. , 0.5]]))
  """
  z = np.asarray(embeddings)
  labels = np.asarray(labels)
  if z.ndim != 2 or z.shape[1] not in (2, 3):
    raise ValueError('embeddings must be [N, 2] or [N, 3] to draw on the '
                     f'circle or sphere, got shape {z.shape}.')
  if labels.shape != (len(z),):
    raise ValueError(f'labels must have shape ({len(z)},) to match the '
                     f'embeddings, got {labels.shape}.')
  if not len(z):
    raise ValueError('embeddings is empty: nothing to draw.')
  bins = _checks.check_int('bins', bins, 2)
  smoothing = _checks.check_number('smoothing', smoothing, at_least=0,
                                   finite=True,
                                   expected='a finite number of degrees >= 0')
  if smoothing and z.shape[1] == 3:
    raise ValueError('smoothing applies to 2-D embeddings only; got 3-D '
                     f'embeddings and smoothing={smoothing}.')
  z = _unit(z)
  classes = np.unique(labels)
  longitude = np.arctan2(z[:, 1], z[:, 0])
  densities = []
  for c in classes:
    rows = labels == c
    if z.shape[1] == 2:
      hist, _ = np.histogram(longitude[rows], bins=bins, range=(-np.pi, np.pi))
    else:
      hist, _, _ = np.histogram2d(z[rows, 2], longitude[rows],
                                  bins=(bins // 2, bins),
                                  range=((-1, 1), (-np.pi, np.pi)))
    densities.append(hist / rows.sum())
  density = np.array(densities)
  if z.shape[1] == 2 and smoothing > 0:
    density = _smooth_on_circle(density, smoothing * bins / 360.0)
  return classes, density


def _smooth_on_circle(density: np.ndarray, sigma_bins: float) -> np.ndarray:
  """Each row convolved with a wrapped Gaussian (rows keep summing to 1)."""
  bins = density.shape[-1]
  offset = np.minimum(np.arange(bins), bins - np.arange(bins))
  kernel = np.exp(-0.5 * (offset / sigma_bins)**2)
  kernel /= kernel.sum()
  smooth = np.fft.irfft(np.fft.rfft(density, axis=-1) * np.fft.rfft(kernel),
                        n=bins, axis=-1)
  return np.maximum(smooth, 0.0)


MAX_3D_CLASSES = 20  # distinct colours of the tab20 colour map


def plot_embedding_density(embeddings, labels, path: str | None = None, *,
                           bins: int | None = None, smoothing: float = 2.0,
                           title: str | None = None, ax=None):
  """Class densities of 2-D embeddings on the circle or 3-D on the sphere.

  2-D (the paper's toy figure): an image with one row per class and the
  angle on the circle across, each row's density scaled to its maximum, so
  the width and overlap of the classes' arcs can be read off. 3-D: the
  sphere unrolled (longitude across, sin(latitude) up, equal-area), each
  pixel coloured by the classes present, weighted by their density, with a
  colour key (at most `MAX_3D_CLASSES` classes).

  Args:
    embeddings: `[N, 2]` or `[N, 3]` embeddings (normalised here).
    labels: `[N]` class labels.
    path: where to write the image; None: only return the figure.
    bins: angle bins (longitude bins in 3-D); default 180 in 2-D, 72 in 3-D
      (a sphere's cells fill more slowly).
    smoothing: 2-D only: Gaussian smoothing along the circle, its standard
      deviation in degrees (0: the plain histogram).
    title: axes title.
    ax: draw into these axes (default: a new figure).

  Returns:
    The matplotlib figure.

  Raises:
    ValueError: as `embedding_density`; more than `MAX_3D_CLASSES` classes
      in 3-D; both `ax` and `path`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import plots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(3), 50)
    >>> angles = labels * 2.0 + 0.1 * rng.normal(size=150)
    >>> z = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    >>> fig = plots.plot_embedding_density(z, labels, bins=90)
    >>> fig.axes[0].images[0].get_array().shape  # classes x angle bins
    (3, 90)
  """
  three_d = np.shape(embeddings)[-1] == 3
  classes, density = embedding_density(
      embeddings, labels, bins=bins or (72 if three_d else 180),
      smoothing=0.0 if three_d else smoothing)
  if three_d and len(classes) > MAX_3D_CLASSES:
    raise ValueError(f'3-D densities tell at most {MAX_3D_CLASSES} classes '
                     f'apart by colour, got {len(classes)}: draw a subset.')
  height = min(0.35 * len(classes) + 1.6, 12.0)
  fig, ax = _figure(ax, path, (8, 4.4) if three_d else (7.5, height))
  if not three_d:
    peak = np.maximum(density.max(axis=1, keepdims=True), 1e-12)
    ax.imshow(density / peak, aspect='auto', cmap='magma', origin='lower',
              interpolation='nearest',
              extent=(-180, 180, -0.5, len(classes) - 0.5))
    shown = np.arange(0, len(classes), max(1, len(classes) // 40))
    ax.set_yticks(shown)
    ax.set_yticklabels([str(classes[i]) for i in shown])
    ax.set_xlabel('angle on the circle (degrees)')
    ax.set_ylabel('class')
    ax.set_title(title or 'Class densities on the circle')
  else:
    from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
    from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel
    palette = colormaps['tab10' if len(classes) <= 10 else 'tab20']
    colours = np.array([palette(i)[:3] for i in range(len(classes))])
    weight = density / np.maximum(density.max(axis=(1, 2), keepdims=True),
                                  1e-12)
    total = weight.sum(axis=0)
    mixed = np.einsum('chw,ck->hwk', weight, colours) / np.maximum(
        total, 1e-12)[..., None]
    image = 1.0 - np.clip(total, 0, 1)[..., None] * (1.0 - mixed)
    ax.imshow(image, aspect='auto', origin='lower', interpolation='nearest',
              extent=(-180, 180, -1, 1))
    ax.legend(handles=[Patch(color=c, label=str(k))
                       for k, c in zip(classes, colours)],
              fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              title='class')
    ax.set_xlabel('longitude (degrees)')
    ax.set_ylabel('sin(latitude)')
    ax.set_title(title or 'Class densities on the sphere (equal-area)')
  return _finish(fig, path)
