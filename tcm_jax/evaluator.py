"""Evaluating a run: embedding a split with the model, its metrics, the report.

`make_embed_fn` compiles the model's embedding over the device mesh;
`Evaluator(embed_fn, mesh, config, transform)` is built once per run (after
big_vision's evaluators); `evaluator.run(state, split)` embeds the split with
a train state and returns its metrics, as periodic evaluation logs them.
The end of a run is `final_evaluation` (every metric of the final split,
bootstrap intervals and hard-pair fractions) and then `write_final_report`
(the raw-input baselines, and the report, by `tcm_jax.report`, with the
embeddings and the config: the run's final files, replaced together).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import logging
import jax
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from tcm_jax import _checksums
from tcm_jax import _verification_report
from tcm_jax import margins as margins_lib
from tcm_jax import metrics
from tcm_jax import models
from tcm_jax import parallel
from tcm_jax import report
from tcm_jax import writers
from tcm_jax.data import datasets
from tcm_jax.data import inputs as inputs_lib
from tcm_jax.data import pipeline

_PCA_SAMPLE = 10000  # training images the raw-input baseline's PCA is fit on


def make_embed_fn(graphdef, mesh):
  """`embed(state, images) -> embeddings`, batch sharded over the mesh.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import config as config_lib, parallel, train
    >>> config = config_lib.default_config()
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, _, embed = train.create_training(
    ...     config, num_classes=5, steps_per_epoch=10, mesh=mesh)
    >>> images = parallel.shard_batch(np.zeros((16, 8, 8, 3), np.float32), mesh)
    >>> embed(state, images).shape
    (16, 8)
  """
  def embed(state, images):
    z, _ = models.apply(graphdef, state.params['encoder'], state.model_state,
                        images, train=False)
    return z
  return parallel.data_parallel(embed, mesh, in_specs=(P(), P(parallel.AXIS)),
                                out_specs=P(parallel.AXIS))



def embed_split(embed_fn, state, split: datasets.Split,
                transform, *, batch_size: int, mesh,
                options: pipeline.LoaderOptions = pipeline.LoaderOptions()
                ) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings `[n, dim]` and labels `[n]` of a whole split, on every host.

  Examples:
    >>> from tcm_jax import config as config_lib, evaluator, parallel, train
    >>> from tcm_jax.data import datasets, transforms
    >>> config = config_lib.default_config()
    >>> config.model = config_lib.model_config(
    ...     'resnet18', width=0.25, small_images=True, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, _, embed = train.create_training(
    ...     config, num_classes=5, steps_per_epoch=10, mesh=mesh)
    >>> test = datasets.load_split('digits', 'test')
    >>> z, labels = evaluator.embed_split(
    ...     embed, state, test, transforms.SmallEvalTransform(size=8),
    ...     batch_size=128, mesh=mesh)
    >>> z.shape, sorted(set(labels.tolist()))
    ((896, 8), [5, 6, 7, 8, 9])
  """
  embeddings, positions = [], []
  for batch in pipeline.eval_batches(
      split, transform, batch_size=batch_size,
      num_processes=jax.process_count(), process_index=jax.process_index(),
      num_devices=mesh.size, options=options):
    z = embed_fn(state, parallel.shard_batch(batch['image'], mesh))
    # Every process's record positions, gathered like the embeddings (-1:
    # padding); the labels are then the split's own.
    index = parallel.to_host(parallel.shard_batch(batch['index'], mesh))
    keep = index >= 0
    embeddings.append(parallel.to_host(z)[keep])
    positions.append(index[keep])
  return np.concatenate(embeddings), split.labels[np.concatenate(positions)]


def eval_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `eval` section as `metrics.evaluate_embeddings`'s arguments.

  Examples:
    >>> from tcm_jax import config as config_lib, evaluator
    >>> evaluator.eval_kwargs(config_lib.default_config())['ks']
    (1, 2, 4, 8)
  """
  e = config.eval
  return dict(far_range=tuple(e.far_range), target_far=e.target_far,
              epsilon=e.epsilon, num_thresholds=e.num_thresholds,
              ks=tuple(e.ks), beta=e.beta,
              engine=e.get('engine', 'exact'))  # configs saved before it


def evaluation_metrics(evaluation: metrics.Evaluation) -> dict[str, float]:
  """The metrics a run logs and returns, by name (`config.metric_names`).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import evaluator, metrics
    >>> labels = np.repeat(np.arange(4), 10)
    >>> z = np.random.default_rng(0).normal(size=(40, 8)) + np.eye(8)[labels]
    >>> sorted(evaluator.evaluation_metrics(
    ...     metrics.evaluate_embeddings(z, labels, ks=(1,))))
    ['eps_opis', 'map_at_r', 'opis', 'r_precision', 'recall_at_1']
  """
  result = {f'recall_at_{k}': v
            for k, v in evaluation.retrieval.recall_at_k.items()}
  result.update(map_at_r=evaluation.retrieval.map_at_r,
                r_precision=evaluation.retrieval.r_precision,
                opis=evaluation.opis, eps_opis=evaluation.eps_opis)
  return {k: float(v) for k, v in result.items()}


class Evaluator:
  """Embeds splits with a run's model and scores them.

  Attributes:
    kwargs: the evaluation's settings (`eval_kwargs`).

  Examples:
    >>> from tcm_jax import config as config_lib, evaluator, parallel, train
    >>> from tcm_jax.data import datasets, transforms
    >>> config = config_lib.default_config()
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=16, embedding_size=8)
    >>> config.input.eval_batch_size, config.eval.ks = 128, (1,)
    >>> mesh = parallel.data_mesh()
    >>> state, _, embed = train.create_training(
    ...     config, num_classes=5, steps_per_epoch=10, mesh=mesh)
    >>> run_evaluator = evaluator.Evaluator(
    ...     embed, mesh, config, transforms.SmallEvalTransform(size=16))
    >>> values = run_evaluator.run(state, datasets.load_split('digits', 'test'))
    >>> 0 < values['recall_at_1'] <= 1
    True
  """

  def __init__(self, embed_fn: Callable[..., jax.Array], mesh,
               config: ml_collections.ConfigDict, transform):
    self._embed_fn, self._mesh, self._transform = embed_fn, mesh, transform
    self._batch_size = config.input.eval_batch_size
    self._options = inputs_lib.loader_options(config)
    self.kwargs = eval_kwargs(config)

  def embed(self, state, split: datasets.Split
            ) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings and labels of `split` (see `embed_split`)."""
    return embed_split(self._embed_fn, state, split, self._transform,
                       batch_size=self._batch_size, mesh=self._mesh,
                       options=self._options)

  def run(self, state, split: datasets.Split) -> dict[str, float]:
    """The metrics of `split` embedded with `state` (`evaluation_metrics`).

    Raises:
      ValueError: the split cannot be evaluated (e.g. collapsed embeddings
        have no threshold range).
    """
    return self.evaluate(*self.embed(state, split))

  def evaluate(self, embeddings: np.ndarray,
               labels: np.ndarray) -> dict[str, float]:
    """The metrics of embeddings already made (`evaluation_metrics`)."""
    return evaluation_metrics(metrics.evaluate_embeddings(
        embeddings, labels, **self.kwargs))


def baseline_metrics(config: ml_collections.ConfigDict,
                     train_split: datasets.Split,
                     split: datasets.Split) -> dict[str, dict[str, float]]:
  """Every metric of the raw-input baselines (`tcm_jax.baselines`) on `split`.

  The PCA is fitted on at most 10,000 training images (a seeded sample); a
  baseline that cannot be computed or evaluated (constant images) is left
  out, with a warning.

  Examples:
    >>> from tcm_jax import config as config_lib, evaluator
    >>> from tcm_jax.data import datasets
    >>> config = config_lib.default_config()
    >>> found = evaluator.baseline_metrics(
    ...     config, datasets.load_split('digits', 'train'),
    ...     datasets.load_split('digits', 'test'))
    >>> sorted(found), found['pixels']['recall_at_1'] > 0.9
    (['pca64', 'pixels'], True)
  """
  from tcm_jax import baselines  # pylint: disable=import-outside-toplevel
  train_rows = np.arange(len(train_split))
  if len(train_rows) > _PCA_SAMPLE:
    train_rows = np.sort(np.random.default_rng(config.seed).choice(
        train_rows, _PCA_SAMPLE, replace=False))
  try:
    features = baselines.baseline_features(
        (train_split.image(i) for i in train_rows),
        (split.image(i) for i in range(len(split))),
        pca_components=config.eval.baseline_pca_components)
  except ValueError as e:  # e.g. training images that do not vary
    logging.warning('The raw-input baselines could not be computed: %s', e)
    return {}
  results = {}
  for name, z in features.items():
    try:
      results[name] = evaluation_metrics(metrics.evaluate_embeddings(
          z, split.labels, **eval_kwargs(config)))
    except ValueError as e:
      logging.warning('The %s baseline could not be evaluated: %s', name, e)
  return results


class FinalEvaluation(NamedTuple):
  """The final split's evaluation, until the report is written.

  Attributes:
    metrics: what `train_and_evaluate` returns (`evaluation_metrics`).
    evaluation: every metric, on process 0 (None on the others).
    plot_curves: the figure's curves (process 0).
    extra: `metrics.json`'s keys beyond the evaluation's own: `tcm_pairs`
      and `bootstrap` (process 0).
    embeddings: the split's embeddings and labels, which
      `write_final_report` saves with the report (process 0).
    verification: the operating points at `eval.fars` and the calibration
      transfer from the validation classes (None without one), process 0.
  """
  metrics: dict[str, float]
  evaluation: metrics.Evaluation | None = None
  plot_curves: metrics.UtilityCurves | None = None
  extra: dict[str, Any] | None = None
  embeddings: tuple[np.ndarray, np.ndarray] | None = None
  verification: tuple[metrics.OperatingPoints,
                      metrics.CalibrationTransfer | None] | None = None


def final_evaluation(config: ml_collections.ConfigDict, workdir: str,
                     embeddings: np.ndarray, labels: np.ndarray, *,
                     tcm_margins: tuple[float, float] | None,
                     calibration: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> FinalEvaluation:
  """Every metric of the final split's embeddings, for `write_final_report`.

  With `eval.fars`, process 0 also measures the verification operating
  points over all pairs of the split, with bootstrap intervals, and with
  `calibration` (the validation classes' embeddings and labels) the FAR and
  FRR that thresholds chosen on them reach on the split.

  Process 0 also measures the bootstrap intervals over classes and the
  fractions of the split's pairs that TCM would count as hard at the run's
  margins (`tcm_margins`, or the config's; for runs without TCM too). It
  writes nothing when the evaluation succeeds (`write_final_report` saves
  the embeddings with the report); embeddings whose evaluation fails (e.g.
  collapsed, without a threshold range) are written to
  `embeddings.failed.npz`, for a look at why, and the files of an earlier
  evaluation are left as they were.

  Raises:
    ValueError: the embeddings hold NaN or infinite values (checked first:
      nothing is written), or cannot be evaluated, or give non-finite
      metrics.
    tcm_jax.writers.RunIOError: `embeddings.failed.npz` could not be
      written.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tcm_jax import config as config_lib, evaluator
    >>> config = config_lib.default_config()
    >>> config.eval.bootstrap_resamples = 20
    >>> labels = np.repeat(np.arange(5), 8)
    >>> z = np.eye(8)[labels] + np.random.default_rng(0).normal(size=(40, 8))
    >>> workdir = tempfile.mkdtemp()
    >>> final = evaluator.final_evaluation(config, workdir, z, labels,
    ...                                    tcm_margins=None)
    >>> sorted(final.extra), final.embeddings[0].shape, os.listdir(workdir)
    (['bootstrap', 'tcm_pairs'], (40, 8), [])
  """
  kwargs = eval_kwargs(config)
  check_finite_embeddings(embeddings, workdir)
  if jax.process_index() != 0:
    return FinalEvaluation(evaluation_metrics(
        metrics.evaluate_embeddings(embeddings, labels, **kwargs)))
  try:
    final = _evaluate_on_process_0(config, workdir, embeddings, labels,
                                   tcm_margins, calibration)
  except ValueError:  # kept aside, for a look at why
    _save_embeddings(workdir, FAILED_EMBEDDINGS, embeddings, labels)
    logging.warning('The final evaluation failed; its embeddings are in %s.',
                    os.path.join(workdir, FAILED_EMBEDDINGS))
    raise
  return final._replace(embeddings=(embeddings, labels))


FAILED_EMBEDDINGS = 'embeddings.failed.npz'


def _save_embeddings(folder: str, name: str, embeddings: np.ndarray,
                     labels: np.ndarray) -> None:
  writers.write_atomic(  # whole or absent, never cut short
      os.path.join(folder, name),
      lambda f: np.savez(f, embeddings=embeddings, labels=labels), 'wb')


def _evaluate_on_process_0(config, workdir, embeddings, labels, tcm_margins,
                           calibration):
  """`final_evaluation`'s metrics, figure curves, extra keys and
  verification."""
  kwargs = eval_kwargs(config)
  # With the one-pass engine and operating points, one pass without a cut
  # serves the metrics, the figure and the operating points.
  keep = bool(config.eval.get('fars')) and kwargs['engine'] == 'histogram'
  evaluation = metrics.evaluate_embeddings(embeddings, labels,
                                           keep_histograms=keep, **kwargs)
  wide = report.plot_curves(evaluation, embeddings, labels)
  if tcm_margins is None:
    tcm_margins = (config.loss.tcm.margin_pos, config.loss.tcm.margin_neg)
  extra = {'tcm_pairs': {
      'margin_pos': float(tcm_margins[0]),
      'margin_neg': float(tcm_margins[1]),
      'from_data': bool(config.loss.tcm_from_data.enabled),
      **margins_lib.hard_pair_fractions(embeddings, labels, *tcm_margins)}}
  if config.eval.bootstrap_resamples:
    intervals = metrics.class_bootstrap(
        evaluation, num_resamples=config.eval.bootstrap_resamples,
        confidence=config.eval.bootstrap_confidence, seed=0)
    extra['bootstrap'] = {
        'num_resamples': config.eval.bootstrap_resamples,
        'confidence': config.eval.bootstrap_confidence, 'seed': 0,
        'over': 'classes',
        'intervals': {name: {'low': i.low, 'high': i.high, 'std': i.std}
                      for name, i in intervals.items()}}
  verification = _verification_report.final_verification(
      config, embeddings, labels, calibration, extra, evaluation.histograms)
  values = evaluation_metrics(evaluation)
  check_finite_metrics(values, workdir)
  return FinalEvaluation(values, evaluation, wide, extra,
                         verification=verification)


def check_finite_embeddings(embeddings: np.ndarray, workdir: str) -> None:
  """Fails if the final embeddings hold NaN or infinite values.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import evaluator
    >>> evaluator.check_finite_embeddings(np.ones((2, 3)), '/tmp/run')
    >>> evaluator.check_finite_embeddings(np.full((2, 3), np.nan), '/tmp/run')
    Traceback (most recent call last):
    ...
    ValueError: The final embeddings hold 6 NaN or infinite values (of 6, in 2 of 2 rows): the model's parameters are not finite. Nothing was written: the embeddings.npz, metrics.json and report.md in /tmp/run, if any, are kept.
  """
  bad = ~np.isfinite(embeddings)
  if bad.any():
    raise ValueError(
        f'The final embeddings hold {int(bad.sum())} NaN or infinite values '
        f'(of {bad.size}, in {int(bad.any(axis=-1).sum())} of {len(bad)} '
        "rows): the model's parameters are not finite. Nothing was written: "
        f'the embeddings.npz, metrics.json and report.md in {workdir}, if '
        'any, are kept.')


def check_finite_metrics(values: dict[str, float], workdir: str) -> None:
  """Fails if a final metric is NaN or infinite (no report is written then).

  Examples:
    >>> from tcm_jax import evaluator
    >>> evaluator.check_finite_metrics({'opis': float('nan')}, '/tmp/run')
    Traceback (most recent call last):
    ...
    ValueError: The final evaluation gave non-finite metrics (opis nan). The metrics.json and report.md in /tmp/run, if any, are kept.
  """
  bad = {k: v for k, v in values.items() if not np.isfinite(v)}
  if bad:
    raise ValueError(
        'The final evaluation gave non-finite metrics ('
        f'{", ".join(f"{k} {v}" for k, v in bad.items())}). The '
        f'metrics.json and report.md in {workdir}, if any, are kept.')


def write_final_report(config: ml_collections.ConfigDict, workdir: str,
                       inputs: inputs_lib.Inputs, split: datasets.Split,
                       num_steps: int, final: FinalEvaluation, *,
                       with_baselines: bool = True) -> None:
  """Process 0's `metrics.json`, `report.md` and figure of a finished run.

  With the raw-input baselines (`eval.baselines`, unless `with_baselines` is
  False) and TCM's margins as the run estimated them (`tcm_margins` in
  `metrics.json`). The trainer writes the report without the baselines as
  soon as the final evaluation is done, and again with them at the very end,
  so that a failure in between leaves the run's metrics on disk. The final
  files are `final.embeddings` as `embeddings.npz` (unless None),
  `config.json`, `report.md`, the figure and `metrics.json`: each replaces
  the one before only once all are written, `metrics.json` last
  (`RunIOError`, naming the workdir, if they cannot be), so that a failure
  leaves the set of the last evaluation whole.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tcm_jax import config as config_lib, evaluator
    >>> from tcm_jax.data import inputs as inputs_lib
    >>> config = config_lib.default_config()
    >>> config.dataset.name, config.input.recipe = 'digits', 'small'
    >>> config.input.classes_per_batch, config.eval.baselines = 5, False
    >>> inputs = inputs_lib.create_inputs(config)
    >>> labels = inputs.test.labels
    >>> z = np.eye(10)[labels] + np.random.default_rng(0).normal(
    ...     size=(len(labels), 10))
    >>> workdir = tempfile.mkdtemp()
    >>> final = evaluator.final_evaluation(config, workdir, z, labels,
    ...                                    tcm_margins=None)
    >>> evaluator.write_final_report(config, workdir, inputs, inputs.test,
    ...                              100, final)
    >>> sorted(os.listdir(workdir))  # doctest: +NORMALIZE_WHITESPACE
    ['class_rates.png', 'config.json', 'det_curve.png', 'embeddings.npz',
     'metrics.json', 'report.md', 'utility_curves.png']
  """
  extra = dict(final.extra)
  margins = writers.logged_margins(workdir)
  if margins:
    extra['tcm_margins'] = margins
  baselines = None
  if config.eval.baselines and with_baselines:
    baselines = extra['baselines'] = baseline_metrics(config, inputs.train,
                                                      split)
  values, _ = report.load_results_dict(final.evaluation.to_dict())
  sections = report.run_sections(config, inputs, split, num_steps, values,
                                 baselines, margins)
  config_dict = _checksums.json_safe(config.to_dict())
  with writers.staged_files(workdir) as staging:  # (process 0 alone)
    if final.embeddings is not None:
      _save_embeddings(staging, 'embeddings.npz', *final.embeddings)
    writers.write_atomic(os.path.join(staging, 'config.json'),
                         lambda f: json.dump(config_dict, f, indent=2))
    if final.verification is not None:
      verification_keys, section = _verification_report.write_verification(
          staging, *final.verification,
          calibration_name='the validation classes',
          intervals=extra.get('bootstrap', {}).get('intervals'))
      extra.update(verification_keys)
      sections = [*sections, section]
    report.write_report(
        final.evaluation, staging, source_name=f'the {split.name} split',
        plot_curves=final.plot_curves, extra=extra, sections=sections,
        title=report.run_title(
            config, os.path.basename(os.path.normpath(workdir)), split.name))
  if final.embeddings is not None:  # the evaluation of these succeeded
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, FAILED_EMBEDDINGS))
