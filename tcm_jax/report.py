"""The report of an evaluation: `metrics.json`, `report.md`, the figure.

Every report is written here: `python -m tcm_jax.evaluate`'s of an
embeddings file (`evaluate_arrays`) and a training run's, whose `report.md`
adds sections on the raw-input baselines, the training and the dataset
(`run_sections`) and whose `metrics.json` adds keys of its own.
`results_table` prints final metrics beside their baselines;
`load_results(workdir)` reads a finished run's back.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm_jax import _moved
from tcm_jax import _verification_report
from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax import writers
from tcm_jax import _figure_curves
from tcm_jax._figure_curves import plot_curves
from tcm_jax._figure_curves import wide_curves as _wide_curves
from tcm_jax._npz import load_npz
from tcm_jax._progress import ProgressBar as _ProgressBar
from tcm_jax._tables import metric_label
from tcm_jax._tables import metric_value
from tcm_jax._tables import results_table
from tcm_jax.metrics import advanced

__all__ = ['PLOT_THRESHOLDS', 'REPORT_FILES', 'evaluate_arrays', 'load_npz',
           'load_results', 'load_results_dict', 'metric_label',
           'metric_value', 'paths_text', 'plot_curves', 'report_paths',
           'results_table', 'run_sections', 'run_title', 'worst_classes',
           'write_report']

#: Thresholds of the figure's curves over the distance range [0, 2]: 0.01
#: apart.
PLOT_THRESHOLDS = _figure_curves.PLOT_THRESHOLDS

if TYPE_CHECKING:  # in annotations only; the data is not this module's
  import ml_collections

  from tcm_jax.data.datasets import Split
  from tcm_jax.data.inputs import Inputs



def worst_classes(evaluation: metrics.Evaluation) -> np.ndarray:
  """Indices (into `curves.classes`) of the eps-OPIS worst group, worst first.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics, report
    >>> labels = np.repeat(np.arange(10), 10)
    >>> z = np.random.default_rng(0).normal(size=(100, 16)) + 3 * np.eye(16)[
    ...     labels]
    >>> len(report.worst_classes(metrics.evaluate_embeddings(z, labels)))
    1
  """
  mean_utility = evaluation.curves.utility.mean(axis=1)
  count = len(mean_utility)
  worst = min(max(math.ceil(evaluation.epsilon * count - 1e-3), 1), count - 1)
  return np.argsort(mean_utility, kind='stable')[:worst]


def evaluate_arrays(arrays: dict[str, np.ndarray], out_dir: str, *,
                    source_name: str = 'arrays', block_size: int | None = None,
                    show_progress: bool = True, title: str | None = None,
                    fars: Sequence[float] | None = None,
                    calibration: dict[str, np.ndarray] | None = None,
                    calibration_name: str = 'the calibration set',
                    **kwargs) -> metrics.Evaluation:
  """Evaluates `embeddings`/`labels` and writes the report into `out_dir`.

  The report's files replace those of an earlier report only once all are
  written, `metrics.json` last (`tcm_jax.writers.staged_files`): a failure
  (a full disk) leaves the earlier set whole, and names the folder.
  `arrays` may also hold `ref_embeddings` and `ref_labels` (a separate
  gallery); `title` is the figure's (see `write_report`); `kwargs` are
  `metrics.evaluate_embeddings`'s. With `fars`, the report adds the
  verification operating points over all pairs (`metrics.operating_points`:
  TAR at each of `fars`, EER, ROC AUC; `det_curve.png`, `class_rates.png`),
  and with `calibration` (arrays `embeddings`, `labels` of another set,
  named `calibration_name`) the transfer of its thresholds to these arrays
  (`metrics.calibration_transfer`; `calibration_transfer.png`).

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tcm_jax import report
    >>> labels = np.repeat(np.arange(4), 10)
    >>> z = np.random.default_rng(0).normal(size=(40, 8)) + np.eye(8)[labels]
    >>> out = tempfile.mkdtemp()
    >>> result = report.evaluate_arrays({'embeddings': z, 'labels': labels},
    ...                                 out, show_progress=False)
    >>> sorted(os.listdir(out))
    ['metrics.json', 'report.md', 'utility_curves.png']
  """
  # One source for the evaluation and the figure: its checks and its upload
  # to the device run once.
  source = advanced.source_from_embeddings(
      arrays['embeddings'], arrays['labels'], arrays.get('ref_embeddings'),
      arrays.get('ref_labels'), block_size=block_size)
  if calibration is not None and fars is None:
    raise ValueError('calibration needs fars, the target FARs to transfer.')
  if fars is not None and kwargs.get('engine') == 'histogram':
    kwargs['keep_histograms'] = True  # one pass for all
  bar = _ProgressBar('evaluating') if show_progress else None
  try:
    evaluation = advanced.evaluate_source(source, progress=bar, **kwargs)
    if bar is not None:
      bar.close()
      bar = _ProgressBar('plotting')
    wide = _wide_curves(source, evaluation, bar)
    if fars is not None and not advanced.histograms_fit(source):
      warnings.warn(f'the operating points of {source.num_classes} classes '
                    'are left out: their histograms do not fit in memory.')
      fars = None
    if fars is not None:
      if bar is not None:
        bar.close()
        bar = _ProgressBar('operating points')
      _, points, transfer = _verification_report.measure(
          source, fars, kwargs.get('target_far', 1e-2), calibration,
          calibration_name, kwargs.get('product'), bar,
          evaluation.histograms)
  finally:
    if bar is not None:
      bar.close()
  with writers.staged_files(out_dir) as staging:  # the old set kept whole
    extra, sections = {}, []
    if fars is not None:
      extra, section = _verification_report.write_verification(
          staging, points, transfer, calibration_name=calibration_name)
      sections.append(section)
    write_report(evaluation, staging, source_name=source_name,
                 plot_curves=wide, title=title, extra=extra,
                 sections=sections)
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
  values, _ = load_results_dict(result)
  lines += [f'| {metric_label(key, evaluation.epsilon)} | '
            f'{metric_value(key, value)} |' for key, value in values.items()]
  lines += [
      '',
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


#: The files of a report, as `report_paths` names them.
REPORT_FILES = ('metrics.json', 'report.md', 'utility_curves.png')


def report_paths(out_dir: str) -> dict[str, str]:
  """Where `write_report` writes each of its files, by name.

  Examples:
    >>> from tcm_jax import report
    >>> report.report_paths('out')['report.md']
    'out/report.md'
  """
  return {name: os.path.join(out_dir, name) for name in REPORT_FILES}


def paths_text(out_dir: str) -> str:
  """Where a report's files are, as the commands print it.

  Examples:
    >>> from tcm_jax import report
    >>> print(report.paths_text('out'))
    report: out/report.md
    metrics: out/metrics.json
    figure: out/utility_curves.png
  """
  paths = report_paths(out_dir)
  return '\n'.join(f'{label}: {paths[name]}' for label, name in (
      ('report', 'report.md'), ('metrics', 'metrics.json'),
      ('figure', 'utility_curves.png')))


def write_report(evaluation: metrics.Evaluation, out_dir: str, *,
                 source_name: str,
                 plot_curves: metrics.UtilityCurves | None = None,
                 extra: dict[str, Any] | None = None,
                 sections: Sequence[str] = (),
                 title: str | None = None) -> dict[str, str]:
  """Writes metrics.json, report.md and utility_curves.png into `out_dir`.

  Args:
    evaluation: what the report is of.
    out_dir: the folder (made if missing).
    source_name: what was evaluated, for the report's heading.
    plot_curves: the curves to draw (default: `evaluation.curves`; see
      `plot_curves` for the whole distance range).
    extra: more `metrics.json` keys, after the evaluation's own.
    sections: more markdown, after the evaluation's own.
    title: the figure's title, which should say which run or file it is
      (a training run: `run_title`); default `Per-class utility of
      <source_name>`.

  Returns:
    The path of each file, by name.

  Examples:
    >>> import json, tempfile
    >>> import numpy as np
    >>> from tcm_jax import metrics, report
    >>> labels = np.repeat(np.arange(4), 10)
    >>> z = np.random.default_rng(0).normal(size=(40, 8)) + np.eye(8)[labels]
    >>> paths = report.write_report(
    ...     metrics.evaluate_embeddings(z, labels), tempfile.mkdtemp(),
    ...     source_name='toy', extra={'note': 'x'}, sections=['\\n## More\\n'])
    >>> json.load(open(paths['metrics.json']))['note']
    'x'
    >>> open(paths['report.md']).read().endswith('## More\\n')
    True
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = report_paths(out_dir)
  with open(paths['metrics.json'], 'w') as f:
    json.dump({**evaluation.to_dict(), **(extra or {})}, f, indent=2,
              allow_nan=False)
  worst = evaluation.curves.classes[worst_classes(evaluation)]
  plots.plot_utility_curves(
      plot_curves or evaluation.curves, evaluation.curves.calibration_range,
      paths['utility_curves.png'], worst_classes=worst,
      title=title or f'Per-class utility of {source_name}')
  with open(paths['report.md'], 'w') as f:
    f.write(_format_report(evaluation, source_name, 'utility_curves.png')
            + ''.join(sections))
  return paths


# --- A run's results -------------------------------------------------------------


def load_results(workdir: str) -> tuple[dict[str, float],
                                        dict[str, dict[str, float]]]:
  """The final metrics of a finished run and of its baselines, from its workdir.

  Returns:
    `(metrics, baselines)` as `train_and_evaluate` returned and
    `results_table` takes them.

  Examples:
    >>> import json, os, tempfile
    >>> from tcm_jax import report
    >>> workdir = tempfile.mkdtemp()
    >>> with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    ...   json.dump({'recall_at_k': {'1': 0.9}, 'map_at_r': 0.5,
    ...              'r_precision': 0.6, 'opis': 0.01, 'eps_opis': 0.02,
    ...              'baselines': {'pixels': {'recall_at_1': 0.8}}}, f)
    >>> values, baselines = report.load_results(workdir)
    >>> values['recall_at_1'], baselines['pixels']['recall_at_1']
    (0.9, 0.8)
  """
  path = os.path.join(workdir, 'metrics.json')
  with open(path) as f:
    saved = json.load(f)
  return load_results_dict(saved, path)


def load_results_dict(saved: dict, source: str = 'metrics.json'
                      ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """`load_results` of an already-read `metrics.json` dict (`source`: for
  the error message).

  Examples:
    >>> from tcm_jax import report
    >>> values, _ = report.load_results_dict(
    ...     {'recall_at_k': {'1': 0.9}, 'map_at_r': 0.5, 'r_precision': 0.6,
    ...      'opis': 0.01, 'eps_opis': 0.02})
    >>> values['recall_at_1'], values['opis']
    (0.9, 0.01)
  """
  try:
    values = {f'recall_at_{k}': v for k, v in saved['recall_at_k'].items()}
    values.update({k: saved[k] for k in ('map_at_r', 'r_precision', 'opis',
                                         'eps_opis')})
  except (KeyError, AttributeError, TypeError) as e:
    raise ValueError(f'{source} is not the metrics.json of a finished run: '
                     f'{type(e).__name__} {e}.') from None
  return values, saved.get('baselines', {})


# --- A training run's sections ---------------------------------------------------


def run_sections(config: ml_collections.ConfigDict, inputs: Inputs,
                 split: Split, num_steps: int, final: dict[str, float],
                 baselines: dict[str, dict[str, float]] | None,
                 margins: Sequence[dict[str, float]] = ()) -> list[str]:
  """The sections a training run adds to its `report.md`, in order.

  Against the raw-input baselines (unless `baselines` is None: turned off),
  the training (model, data, objective with its margins, optimizer, steps)
  and, for glyphs, the dataset's facts.

  Args:
    config: the run's config.
    inputs: its inputs (`tcm_jax.data.inputs.create_inputs`).
    split: the split of the final evaluation.
    num_steps: the steps trained.
    final: the final metrics, as `load_results` gives them.
    baselines: the baselines' metrics by name, or None.
    margins: TCM's margins estimated from the data (`logged_margins`).

  Examples:
    >>> from tcm_jax import config as config_lib, report
    >>> from tcm_jax.data import inputs as inputs_lib
    >>> config = config_lib.default_config()
    >>> config.dataset.name, config.input.recipe = 'digits', 'small'
    >>> config.input.classes_per_batch = 5
    >>> inputs = inputs_lib.create_inputs(config)
    >>> sections = report.run_sections(
    ...     config, inputs, inputs.test, 100, {'recall_at_1': 0.9},
    ...     {'pixels': {'recall_at_1': 0.8}})
    >>> [s.split('\\n')[1] for s in sections]
    ['## Against raw-input baselines', '## Training']
  """
  sections = [_training_section(config, inputs, num_steps, margins)]
  if config.dataset.name == 'glyphs':
    from tcm_jax.data import glyphs  # pylint: disable=import-outside-toplevel
    sections.append('\n## Dataset\n\n```\n' + glyphs.dataset_facts(
        config.dataset.glyphs.to_dict(), pretrain=False) + '\n```\n')
  if baselines is not None:
    sections.insert(0, _baseline_section(final, baselines, config, split))
  return sections


def run_title(config: ml_collections.ConfigDict, run_name: str,
              split_name: str) -> str:
  """The figure title of a training run: which run, its loss, TCM or not.

  Args:
    config: the run's config.
    run_name: the run's name (e.g. its workdir's folder name).
    split_name: the split evaluated.

  Examples:
    >>> from tcm_jax import config as config_lib, report
    >>> config = config_lib.default_config()
    >>> config.loss.name, config.loss.tcm.enabled = 'arcface', True
    >>> report.run_title(config, 'arcface-tcm-seed0', 'test')
    'arcface-tcm-seed0: arcface + TCM, the test split'
    >>> config.loss.tcm.enabled = False
    >>> report.run_title(config, 'arcface-seed0', 'test')
    'arcface-seed0: arcface without TCM, the test split'
  """
  tcm = ' + TCM' if config.loss.tcm.enabled else ' without TCM'
  return f'{run_name}: {config.loss.name}{tcm}, the {split_name} split'


def _baseline_section(final: dict[str, float],
                      baselines: dict[str, dict[str, float]], config,
                      split: Split) -> str:
  k = config.eval.baseline_pca_components
  omitted = [name for name in ('pixels', f'pca{k}') if name not in baselines]
  return (
      '\n## Against raw-input baselines\n\n'
      f'The same metrics of the {split.name} images themselves: `pixels` are '
      'their pixel values in [0, 1], flattened (images over 32 px, or of '
      f'unequal sizes, resized to 32 x 32); `pca{k}` projects those on the '
      f'whitened principal components (at most {k}) of the training '
      'classes\' images. A trained embedding should beat both.'
      + (f' Omitted, as they could not be computed: {", ".join(omitted)} '
         '(see the log).' if omitted else '') + '\n\n'
      + results_table(final, baselines, epsilon=config.eval.epsilon) + '\n')


def _margins_text(config, margins: list[dict[str, float]]) -> str:
  tcm, from_data = config.loss.tcm, config.loss.tcm_from_data
  if not from_data.enabled:
    return f'm+ {tcm.margin_pos:g}, m- {tcm.margin_neg:g}'
  rule = (f'from the data: {100 * from_data.hard_pos_fraction:g}% of '
          f'positive and {100 * from_data.hard_neg_fraction:g}% of negative '
          'pairs hard, ' + (f're-estimated every {from_data.every_steps} steps'
                            if from_data.every_steps else 'estimated once'))
  if not margins:
    return rule
  steps = ', '.join(f'step {m["step"]}: {m["margin_pos"]:.3f}/'
                    f'{m["margin_neg"]:.3f}' for m in margins[:3])
  more = (f', ..., step {margins[-1]["step"]}: '
          f'{margins[-1]["margin_pos"]:.3f}/{margins[-1]["margin_neg"]:.3f}'
          if len(margins) > 3 else '')
  return f'{rule}; m+/m- {steps}{more}'


def _training_section(config, inputs: Inputs, num_steps: int,
                      margins: Sequence[dict[str, float]] = ()) -> str:
  tcm = config.loss.tcm
  objective = config.loss.name + (
      f' + TCM ({_margins_text(config, list(margins))}, lambda '
      f'{tcm.lambda_pos:g}/{tcm.lambda_neg:g})' if tcm.enabled else
      ' (no TCM)')
  start = (f', starting from {config.pretrained}' if config.pretrained
           else ', from a random initialisation')
  batch = config.input.classes_per_batch * config.input.samples_per_class
  sides = ', '.join(
      f'{split.name} {split.num_classes} classes / {len(split)} images'
      for split in (inputs.train, inputs.val, inputs.test) if split is not None)
  selection = (
      f'Periodic evaluation used {inputs.selection.name}; this evaluation '
      f'is of {config.eval.final_split}.' if inputs.val is not None else
      f'The dataset has no validation side: periodic evaluation, if any, '
      f'used {inputs.selection.name}.')
  return (
      f'\n## Training\n\n{config.model.name}{start}, on '
      f'{config.dataset.name} ({sides}), {objective}, {config.optimizer.name} at learning rate '
      f'{config.optimizer.learning_rate:g}; {num_steps} steps of '
      f'{batch} images ({config.input.classes_per_batch} classes x '
      f'{config.input.samples_per_class}). {selection} The whole config is in '
      '`config.json`; the training curves are in `metrics.jsonl` and '
      '`tensorboard/`.\n')


_moved.publish(globals())  # documented, and named in tracebacks, as here
