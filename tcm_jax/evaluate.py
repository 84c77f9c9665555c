r"""Evaluate embeddings from any framework: every metric, a report, the figure.

  python -m tcm_jax.evaluate --embeddings embeddings.npz --out report_dir \
      [--far_range=1e-3,1e-1 | --distance_range=0.2,0.6] [--target_far=1e-2]

The npz holds `embeddings` `[N, D]` and integer `labels` `[N]` (optionally
`ref_embeddings` and `ref_labels`, to rank queries against a separate
gallery), so a model trained anywhere, PyTorch included, can be checked:
`np.savez('embeddings.npz', embeddings=z, labels=y)`. The output folder gets
`metrics.json`, `report.md` and `utility_curves.png`. The work is done by
`evaluate_arrays` and `write_report`, which a notebook can call directly.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax.metrics import evaluation as evaluation_lib
from tcm_jax.metrics import pair_counts
from tcm_jax.metrics import threshold as threshold_lib
from tcm_jax.metrics.opis import curves_from_counts

PLOT_THRESHOLDS = 61


class _ProgressBar:
  """A tqdm bar over the blocks of all passes (silent when not a terminal)."""

  def __init__(self, description: str):
    import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm.tqdm(desc=description, unit='block', disable=None)

  def __call__(self, done: int, total: int) -> None:
    self._bar.total = total
    self._bar.n = done
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


def load_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of an evaluation file, checked for the keys it needs."""
  with np.load(path) as data:
    arrays = {key: data[key] for key in data.files}
  missing = {'embeddings', 'labels'} - arrays.keys()
  if missing:
    raise ValueError(
        f'{path} must hold arrays named embeddings and labels; missing '
        f'{sorted(missing)}, found {sorted(arrays)}.')
  if ('ref_embeddings' in arrays) != ('ref_labels' in arrays):
    raise ValueError(f'{path}: ref_embeddings and ref_labels go together.')
  return arrays


def _plot_curves(source: pair_counts.PairSource, evaluation: metrics.Evaluation,
                 progress) -> metrics.UtilityCurves:
  """Utility curves over three times the calibration range, for the figure."""
  low, high = evaluation.curves.calibration_range.distance
  width = high - low
  thresholds = threshold_lib.thresholds_between(
      max(low - width, 0.0), min(high + width, 2.0), PLOT_THRESHOLDS)
  counts = pair_counts.class_counts(source, thresholds, high, progress)
  mask = np.isin(source.classes, evaluation.curves.classes)
  return curves_from_counts(counts, mask, source.classes, evaluation.beta,
                            evaluation.curves.calibration_range)


def worst_classes(evaluation: metrics.Evaluation) -> np.ndarray:
  """Indices (into `curves.classes`) of the eps-OPIS worst group, worst first."""
  mean_utility = evaluation.curves.utility.mean(axis=1)
  count = len(mean_utility)
  worst = min(max(math.ceil(evaluation.epsilon * count - 1e-3), 1), count - 1)
  return np.argsort(mean_utility, kind='stable')[:worst]


def evaluate_arrays(arrays: dict[str, np.ndarray], out_dir: str, *,
                    source_name: str = 'arrays', block_size: int | None = None,
                    show_progress: bool = True,
                    **kwargs) -> metrics.Evaluation:
  """Evaluates `embeddings`/`labels` and writes the report into `out_dir`."""
  source = pair_counts.source_from_embeddings(
      arrays['embeddings'], arrays['labels'], arrays.get('ref_embeddings'),
      arrays.get('ref_labels'), block_size=block_size)
  bar = _ProgressBar('evaluating') if show_progress else None
  try:
    evaluation = evaluation_lib.evaluate(source, progress=bar, **kwargs)
    if bar is not None:
      bar.close()
      bar = _ProgressBar('plotting')
    wide = _plot_curves(source, evaluation, bar)
  finally:
    if bar is not None:
      bar.close()
  write_report(evaluation, out_dir, source_name=source_name, plot_curves=wide)
  return evaluation


def _format_report(evaluation: metrics.Evaluation, source_name: str,
                   plot_file: str) -> str:
  result = evaluation.to_dict()
  calibration = evaluation.calibration
  low, high = evaluation.curves.calibration_range.distance
  far = evaluation.curves.calibration_range.far
  lines = [
      f'# Evaluation of {source_name}', '',
      f'{result["num_queries"]} queries against {result["num_references"]} '
      f'references; {result["num_classes_evaluated"]} classes evaluated.', '',
      '| metric | value |', '|---|---|',
  ]
  lines += [f'| Recall@{k} | {v:.4f} |'
            for k, v in evaluation.retrieval.recall_at_k.items()]
  lines += [
      f'| MAP@R | {evaluation.retrieval.map_at_r:.4f} |',
      f'| R-precision | {evaluation.retrieval.r_precision:.4f} |',
      f'| OPIS | {evaluation.opis:.5f} |',
      f'| {evaluation.epsilon:g}-OPIS | {evaluation.eps_opis:.5f} |', '',
      '## Calibration range', '',
      (f'Distances {low:.5f} to {high:.5f}'
       + ('' if far is None else f', where the global FAR goes from '
          f'{far[0]:g} to {far[1]:g}')
       + f' (FAR reached exactly: {evaluation.far_reached[0]:.3g} and '
       f'{evaluation.far_reached[1]:.3g}); {len(evaluation.curves.thresholds)}'
       f' thresholds, utility = F-beta with beta = {evaluation.beta:g}.'), '',
      f'![per-class utility curves]({plot_file})', '',
      f'## One global threshold at FAR {calibration.target_far:g}', '',
      f'Threshold {calibration.threshold:.5f} (accept when 1 - cos <= it): '
      f'global FAR {calibration.far:.4g}, global FRR {calibration.frr:.4g}.', '',
      '| per class | worst | best | std |', '|---|---|---|---|',
      '| FAR | {worst:.4g} | {best:.4g} | {std:.4g} |'.format(
          **calibration.far_spread),
      '| FRR | {worst:.4g} | {best:.4g} | {std:.4g} |'.format(
          **calibration.frr_spread), '',
      f'## Worst classes (the {evaluation.epsilon:g}-OPIS group)', '',
      '| class | mean utility over the range | FAR | FRR |',
      '|---|---|---|---|',
  ]
  curves = evaluation.curves
  for index in worst_classes(evaluation)[:20]:
    lines.append(
        f'| {curves.classes[index]} | {curves.utility[index].mean():.4f} | '
        f'{calibration.class_far[index]:.4g} | '
        f'{calibration.class_frr[index]:.4g} |')
  excluded = result['excluded_classes']
  lines += ['', f'Excluded: {len(excluded)} classes without a positive pair '
            '(a single sample, or no reference of their own class)'
            + (f': {", ".join(map(str, excluded[:20]))}'
               f'{", ..." if len(excluded) > 20 else ""}' if excluded else '')
            + f'; {result["num_excluded_queries"]} queries without another '
            'sample of their class.', '']
  return '\n'.join(lines)


def write_report(evaluation: metrics.Evaluation, out_dir: str, *,
                 source_name: str,
                 plot_curves: metrics.UtilityCurves | None = None
                 ) -> dict[str, str]:
  """Writes metrics.json, report.md and utility_curves.png into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name)
           for name in ('metrics.json', 'report.md', 'utility_curves.png')}
  with open(paths['metrics.json'], 'w') as f:
    json.dump(evaluation.to_dict(), f, indent=2, allow_nan=False)
  worst = evaluation.curves.classes[worst_classes(evaluation)]
  plots.plot_utility_curves(
      plot_curves or evaluation.curves, evaluation.curves.calibration_range,
      paths['utility_curves.png'], worst_classes=worst,
      title=f'Per-class utility of {source_name}')
  with open(paths['report.md'], 'w') as f:
    f.write(_format_report(evaluation, source_name, 'utility_curves.png'))
  return paths


_EMBEDDINGS = flags.DEFINE_string(
    'embeddings', None, 'npz with embeddings [N, D] and labels [N].')
_OUT = flags.DEFINE_string('out', None, 'output folder for the report.')
_FAR_RANGE = flags.DEFINE_list(
    'far_range', ['1e-3', '1e-1'], 'global FAR bounds of the calibration range.')
_DISTANCE_RANGE = flags.DEFINE_list(
    'distance_range', None, 'explicit distance range; overrides far_range.')
_BETA = flags.DEFINE_float('beta', 1.0, 'F-beta weight of sensitivity.')
_NUM_THRESHOLDS = flags.DEFINE_integer('num_thresholds', 101,
                                       'thresholds over the range.')
_EPSILON = flags.DEFINE_float('epsilon', 0.1, 'worst-class fraction.')
_TARGET_FAR = flags.DEFINE_float('target_far', 1e-2,
                                 'global FAR of the one global threshold.')
_KS = flags.DEFINE_list('ks', ['1', '2', '4', '8'], 'Recall@K values.')
_BLOCK_SIZE = flags.DEFINE_integer('block_size', None, 'query rows per block.')


def _floats(name: str, values: Sequence[str] | None) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError as e:
    raise app.UsageError(f'--{name} takes numbers, got {values}.') from e


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _EMBEDDINGS.value or not _OUT.value:
    raise app.UsageError('--embeddings and --out are required.')
  arrays = load_npz(_EMBEDDINGS.value)
  kwargs: dict[str, Any] = dict(
      far_range=_floats('far_range', _FAR_RANGE.value),
      distance_range=_floats('distance_range', _DISTANCE_RANGE.value),
      beta=_BETA.value, num_thresholds=_NUM_THRESHOLDS.value,
      epsilon=_EPSILON.value, target_far=_TARGET_FAR.value,
      ks=[int(k) for k in _KS.value])
  evaluation = evaluate_arrays(
      arrays, _OUT.value, source_name=os.path.basename(_EMBEDDINGS.value),
      block_size=_BLOCK_SIZE.value, **kwargs)
  summary = evaluation.to_dict()
  print(json.dumps({k: summary[k] for k in (
      'recall_at_k', 'map_at_r', 'opis', 'eps_opis', 'calibration_range')}))
  print(f'report: {os.path.join(_OUT.value, "report.md")}')


if __name__ == '__main__':
  app.run(main)
