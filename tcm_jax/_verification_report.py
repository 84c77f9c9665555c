"""The verification part of a report: operating points, the per-class rates
at the global threshold and calibration transfer, as `metrics.json` keys, a
markdown section and three figures."""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import numpy as np

from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import advanced

DET_FILE = 'det_curve.png'
CLASS_RATES_FILE = 'class_rates.png'
TRANSFER_FILE = 'calibration_transfer.png'


def measure(source: advanced.PairSource, fars, target_far: float,
            calibration: dict[str, np.ndarray] | None, calibration_name: str,
            product: str | None, progress,
            histograms: advanced.PairHistograms | None = None
            ) -> tuple[advanced.PairHistograms, metrics.OperatingPoints,
                       metrics.CalibrationTransfer | None]:
  """The histograms and operating points of `source` and, with
  `calibration` arrays, the transfer of their thresholds to it: one pass
  without a cut per set (none for `source` when given its `histograms`)."""
  if histograms is None or histograms.cut_bin != _histograms.LAST_BIN:
    histograms = advanced.pair_histograms(source, product=product,
                                          progress=progress)
  points = advanced.operating_points_from_histograms(
      histograms, source.classes, fars=fars, target_far=target_far)
  if calibration is None:
    return histograms, points, None
  other = advanced.source_from_embeddings(calibration['embeddings'],
                                          calibration['labels'])
  dims = (source.embeddings.shape[1], other.embeddings.shape[1])
  if dims[0] != dims[1]:
    raise ValueError(
        f'{calibration_name} has embeddings of dimension {dims[1]}, the '
        f'evaluated set {dims[0]}: they must come from the same model.')
  transfer = advanced.transfer_from_histograms(
      advanced.pair_histograms(other, product=product, progress=progress),
      histograms, source.classes, target_fars=fars)
  return histograms, points, transfer


def _rate(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.4g}'


def counts_from_histograms(histograms: advanced.PairHistograms,
                           thresholds: np.ndarray, extra: float
                           ) -> advanced.ClassCounts:
  """Per-class counts at the grid edges nearest `thresholds` and `extra`,
  from histograms of every pair."""
  return _histograms.class_counts_at(
      histograms, [_histograms.edge_bin(t) for t in thresholds],
      _histograms.edge_bin(extra))


def _interval(intervals, name: str) -> str:
  if not intervals or name not in intervals:
    return ''
  return ' [{low:.4g}, {high:.4g}]'.format(**intervals[name])


def _points_lines(points: metrics.OperatingPoints,
                  intervals: dict[str, dict[str, float]] | None
                  ) -> list[str]:
  lines = [
      '## Verification over all pairs', '',
      f'{points.num_positive} positive and {points.num_negative} negative '
      f'pairs: EER {points.eer:.4f}{_interval(intervals, "eer")} (at '
      f'distance {points.eer_threshold:.5f}), ROC AUC {points.auc:.5f}'
      f'{_interval(intervals, "auc")}. A target FAR is resolved only where '
      f'the set holds {points.min_false_accepts} negative pairs within it'
      + ('; [low, high]: bootstrap intervals over classes.' if intervals
         else '.'), '',
      '| target FAR | threshold | FAR reached | TAR |', '|---|---|---|---|',
  ]
  for point in points.tar_at_far:
    if point.resolvable:
      lines.append(
          f'| {point.target_far:g} | {point.threshold:.5f} | '
          f'{point.far:.4g} | {point.tar:.4f}'
          f'{_interval(intervals, f"tar_at_{point.target_far:g}")} |')
    else:
      lines.append(f'| {point.target_far:g} | not resolvable (fewer than '
                   f'{points.min_false_accepts} negatives) | | |')
  spread = points.class_threshold_spread
  lines += [
      '', f'Each class\'s own threshold at FAR '
      f'{points.calibration.target_far:g}: from {spread["min"]:.5f} to '
      f'{spread["max"]:.5f} (std {spread["std"]:.5f}); one global threshold '
      'serves them all.', '',
      f'![DET curve]({DET_FILE})', '',
      f'![per-class FAR and FRR at the global threshold]({CLASS_RATES_FILE})',
      '',
  ]
  return lines


def _transfer_lines(transfer: metrics.CalibrationTransfer,
                    calibration_name: str) -> list[str]:
  lines = [
      f'## Calibration transfer from {calibration_name}', '',
      f'Thresholds chosen on {calibration_name} '
      f'({transfer.num_calibration_negatives} negative pairs), measured '
      'here: the global FAR and FRR they reach, and the spread of the '
      "classes' FAR.", '',
      '| target FAR | threshold | FAR there | FAR here | FRR here | '
      'class FAR worst | class FAR best |', '|---|---|---|---|---|---|---|',
  ]
  for target, point in zip(transfer.target_fars, transfer.points):
    if point is None:
      lines.append(f'| {target:g} | not resolvable on {calibration_name} '
                   '| | | | | |')
      continue
    lines.append(
        f'| {target:g} | {point.threshold:.5f} | '
        f'{_rate(point.calibration_far)} | {point.far:.4g} | '
        f'{point.frr:.4g} | {point.far_spread["worst"]:.4g} | '
        f'{point.far_spread["best"]:.4g} |')
  return lines + ['', f'![calibration transfer]({TRANSFER_FILE})', '']


def write_verification(out_dir: str, points: metrics.OperatingPoints,
                       transfer: metrics.CalibrationTransfer | None = None,
                       *, calibration_name: str = 'the calibration set',
                       intervals: dict[str, dict[str, float]] | None = None
                       ) -> tuple[dict[str, Any], str]:
  """Writes the verification figures into `out_dir` (`intervals`: the
  bootstrap `{'low', 'high'}` of `tar_at_<far>`, `eer`, `auc`, printed in
  the tables).

  Returns:
    `(metrics.json keys, markdown section)`: `operating_points` (and
    `calibration_transfer`), and the tables and figures' links.
  """
  plots.plot_det_curve(points, os.path.join(out_dir, DET_FILE))
  plots.plot_class_rates(points.calibration,
                         os.path.join(out_dir, CLASS_RATES_FILE))
  extra = {'operating_points': points.to_dict()}
  lines = _points_lines(points, intervals)
  if transfer is not None:
    plots.plot_calibration_transfer(transfer,
                                    os.path.join(out_dir, TRANSFER_FILE))
    extra['calibration_transfer'] = transfer.to_dict()
    lines += _transfer_lines(transfer, calibration_name)
  return extra, '\n' + '\n'.join(lines)


def final_verification(config, embeddings, labels, calibration, extra,
                       histograms):
  """The operating points at `eval.fars` (None without), their intervals
  added to `extra['bootstrap']`, and the transfer from `calibration`."""
  fars = tuple(config.eval.get('fars', ()))  # configs saved before it
  if not fars:
    return None
  source = advanced.source_from_embeddings(embeddings, labels)
  if not advanced.histograms_fit(source):
    logging.warning('The operating points are left out of the report: the '
                    'histograms of every pair of %d classes do not fit in '
                    'memory (eval.fars=() says so).', source.num_classes)
    return None
  arrays = None if calibration is None else dict(
      zip(('embeddings', 'labels'), calibration))
  try:
    histograms, points, transfer = measure(
        source, fars, config.eval.target_far, arrays,
        'the validation classes', None, None, histograms)
  except ValueError as e:  # the validation classes cannot calibrate
    if arrays is None:
      raise
    logging.warning('The calibration transfer from the validation classes '
                    'is left out of the report: %s', e)
    histograms, points, transfer = measure(
        source, fars, config.eval.target_far, None, '', None, None,
        histograms)
  if config.eval.bootstrap_resamples:
    intervals = advanced.operating_point_intervals(
        histograms, fars=fars, target_far=config.eval.target_far,
        num_resamples=config.eval.bootstrap_resamples,
        confidence=config.eval.bootstrap_confidence, seed=0)
    extra['bootstrap']['intervals'].update(
        {name: {'low': i.low, 'high': i.high, 'std': i.std}
         for name, i in intervals.items()})
  return points, transfer
