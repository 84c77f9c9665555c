"""Training: `train_and_evaluate(config, workdir)` and the pieces it is made of.

The run reads top to bottom in `train_and_evaluate`: inputs, model, objective
and optimizer, the data-parallel step, resume, the loop (log, evaluate,
checkpoint), the final evaluation and report. A notebook can call each piece
on its own: `create_objective`, `create_model`, `make_train_step` (over the
module-level `train_step`), `create_training`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tcm_jax import _moved
from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax import evaluator as evaluator_lib
from tcm_jax import margins as margins_lib
from tcm_jax import models
from tcm_jax import optimizer as optimizer_lib
from tcm_jax import parallel
from tcm_jax import warm_start
from tcm_jax import writers
from tcm_jax._train_step import TrainState
from tcm_jax._train_step import TrainStep
from tcm_jax._train_step import make_train_step
from tcm_jax._train_step import train_step
from tcm_jax.data import inputs as inputs_lib
from tcm_jax.data import pipeline
from tcm_jax.losses import registry

__all__ = ['NonFiniteLossError', 'TrainState', 'TrainStep', 'create_model',
           'create_objective', 'create_training', 'make_train_step',
           'prepare_workdir', 'train_and_evaluate', 'train_step']


class NonFiniteLossError(FloatingPointError):
  """Training stopped: a step's loss or gradient norm was NaN or infinite."""


def create_objective(config: ml_collections.ConfigDict) -> registry.Objective:
  """The base loss plus TCM (unless `loss.tcm.enabled` is False).

  A pair, ranking or proxy loss alike (`registry.objective`); a proxy loss
  makes its class proxies itself (`Objective.init_params`). The ranking
  losses' `max_positives` defaults to `samples_per_class - 1`, the exact
  number of positives of every query in a P x K batch.

  Examples:
    >>> from tcm_jax import config as config_lib, train
    >>> config = config_lib.default_config()
    >>> config.loss.name = 'arcface'
    >>> config.loss.hyper.scale = 16.0
    >>> objective = train.create_objective(config)
    >>> objective.name, objective.uses_proxies, objective.base_hyper
    ('arcface', True, {'scale': 16.0})
  """
  name, tcm, hyper = config_lib.objective_arguments(config)
  return registry.objective(name, tcm=tcm, **hyper)


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 objective: registry.Objective):
  """`(graphdef, params, model_state)`: the encoder and the objective's own.

  `params` is `{'encoder': ..., **objective.init_params(...)}` (a proxy
  loss's `proxies`, one per training class); the encoder starts from
  `config.pretrained` if set (`tcm_jax.warm_start`). ResNets with trained
  BatchNorm synchronise its statistics over the mesh axis `parallel.AXIS`
  unless the config names another (every device normalises with the global
  batch's), so that one step on many devices equals one step on one; such a
  model runs inside `parallel.data_parallel`.

  Examples:
    >>> from tcm_jax import config as config_lib, train
    >>> config = config_lib.default_config()
    >>> config.loss.name = 'arcface'
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=16)
    >>> graphdef, params, state = train.create_model(
    ...     config, 3, train.create_objective(config))
    >>> sorted(params), params['proxies'].shape
    (['encoder', 'proxies'], (3, 16))
  """
  options = config.model.to_dict()
  if (options['name'] in models.resnet.RESNETS
      and not options.get('frozen_batch_norm')
      and options.get('batch_norm_axis_name') is None):
    options['batch_norm_axis_name'] = parallel.AXIS
  rngs = nnx.Rngs(config.seed)
  encoder = models.create_encoder(options, rngs=rngs)
  graphdef, params, model_state = warm_start.load_pretrained(config, encoder)
  params = {'encoder': params, **objective.init_params(
      rngs.params(), num_classes, options['embedding_size'])}
  return graphdef, params, model_state


def create_training(config: ml_collections.ConfigDict, *, num_classes: int,
                    steps_per_epoch: int, mesh):
  """`(state, train_step, embed)`: a run's initial state and compiled steps.

  The state is replicated over `mesh`; `train_step(state, batch)` is
  `make_train_step`'s and `embed(state, images)` is
  `tcm_jax.evaluator.make_embed_fn`'s.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import config as config_lib, parallel, train
    >>> config = config_lib.default_config()  # Smooth-AP + TCM
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, train_step, _ = train.create_training(
    ...     config, num_classes=4, steps_per_epoch=10, mesh=mesh)
    >>> rng = np.random.default_rng(0)
    >>> batch = parallel.shard_batch(
    ...     {'image': rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
    ...      'label': np.repeat(np.arange(4, dtype=np.int32), 4)}, mesh)
    >>> state, metrics = train_step(state, batch)
    >>> int(state.step), bool(metrics['finite']), sorted(metrics)[:3]
    (1, True, ['base', 'finite', 'grad_norm'])
  """
  objective = create_objective(config)
  graphdef, params, model_state = create_model(config, num_classes, objective)
  optimizer, schedule = optimizer_lib.create(config, steps_per_epoch)
  state = parallel.replicate(
      TrainState(jnp.int32(0), params, model_state, optimizer.init(params)),
      mesh)
  return (state,
          make_train_step(graphdef, objective, optimizer, schedule, mesh),
          evaluator_lib.make_embed_fn(graphdef, mesh))


def _check_finite(step: int, step_metrics, checkpoints, workdir: str) -> None:
  """Stops the run at a step whose loss or gradient was not finite."""
  if bool(step_metrics['finite']):
    return
  parts = ', '.join(f'{k}={float(v):.4g}' for k, v in step_metrics.items()
                    if k not in ('finite', 'learning_rate'))
  last = checkpoints.latest_step()
  kept = ('no checkpoint had been written yet' if last is None else
          f'the last good checkpoint (step {last}) is kept in '
          f'{os.path.join(workdir, "checkpoints")}')
  raise NonFiniteLossError(
      f'Non-finite loss at step {step}: {parts}. Training stopped; the '
      f'state was not updated by this step, and {kept}.')


def prepare_workdir(workdir: str) -> None:
  """Makes the run's folder (and its parents) if missing.

  Raises:
    ValueError: `workdir` is a file, or has a file among its parents.
    tcm_jax.writers.RunIOError: the folder cannot be made (e.g. no
      permission), with the path and the cause.

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import train
    >>> path = os.path.join(tempfile.mkdtemp(), 'a_file')
    >>> open(path, 'w').close()
    >>> train.prepare_workdir(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: workdir must be a folder (the run's checkpoints, logs and report go in it); .../a_file is a file.
  """
  if '://' in str(workdir):
    return  # (a bucket: the file system makes folders as it writes)
  parent = os.path.abspath(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    what = ('is a file' if parent == os.path.abspath(workdir) else
            f'is in {parent}, which is a file')
    raise ValueError(f'workdir must be a folder (the run\'s checkpoints, logs '
                     f'and report go in it); {workdir} {what}.')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise writers.io_error('Making the workdir', workdir, error) from error


def _close_all(closers: Sequence[Callable[[], None]], *,
               failing: bool) -> None:
  """Calls each closer; raises the first failure, unless already `failing`
  (then a closer's failure, e.g. the same full disk, is logged in one line
  and the run's own error is the one raised)."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as error:  # pylint: disable=broad-exception-caught
      if failing:
        logging.warning('While stopping: %s', error)
      elif first is None:
        first = error
  if first is not None:
    raise first


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *,
    devices: Sequence[jax.Device] | None = None,
    callbacks: Sequence[Callable[[int, TrainState], None]] = (),
) -> dict[str, float]:
  """Trains and evaluates as `config` says, resuming from `workdir` if it can.

  Writes into `workdir`: `checkpoints/` (Orbax), `metrics.jsonl` and
  `tensorboard/` (kinds `train`; `eval`, of the validation split where the
  dataset has one, else the test split; `test`, the final test metrics when
  they are not the eval ones), and at the end, of the final split
  (`eval.final_split`): `report.md`, `metrics.json`, `utility_curves.png`
  and its embeddings and labels in `embeddings.npz`.

  Args:
    config: from `tcm_jax.config.default_config()` or a file in `configs/`.
    workdir: the run's folder; a run there with checkpoints is resumed.
    devices: the devices to train on (default: all of every process).
    callbacks: `fn(step, state)` called after each step (`step` completed
      steps), e.g. to stop a run from outside. `state` is valid during the
      call only: the next step reuses its buffers.

  Returns:
    The final evaluation metrics (`recall_at_1`, ..., `opis`, `eps_opis`).

  Raises:
    ValueError: an unknown config key or a bad value, a workdir that is a
      file or holds a run of another config, before anything is built or
      restored.
    NonFiniteLossError: a step's loss was not finite; the checkpoints
      written before it are kept.
    tcm_jax.writers.RunIOError: a file could not be written (a full disk),
      with its path and the cause; what was on disk before is kept.

  Examples:
    >>> import os, tempfile
    >>> import jax
    >>> from tcm_jax import config as config_lib, train
    >>> config = config_lib.default_config()
    >>> config.dataset.name = 'digits'
    >>> config.input.recipe, config.input.image_size = 'small', 8
    >>> config.input.classes_per_batch, config.input.eval_batch_size = 4, 128
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=16)
    >>> config.train.num_steps, config.train.progress_bar = 3, False
    >>> config.eval.baselines = False  # (they would add a section to report.md)
    >>> config.eval.bootstrap_resamples = 0  # no confidence intervals
    >>> workdir = tempfile.mkdtemp()
    >>> final = train.train_and_evaluate(  # one device: quick to compile
    ...     config, workdir, devices=jax.devices()[:1])
    >>> 0 < final['recall_at_1'] <= 1, os.listdir(f'{workdir}/checkpoints')
    (True, ['3'])
  """
  # --- Inputs, model and step: every config error before anything compiles.
  config_lib.check_config(config)
  prepare_workdir(workdir)
  mesh = parallel.data_mesh(devices)
  config_dict = checkpoint_lib.json_safe(config.to_dict())
  checkpoints = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'),
      keep=config.train.keep_checkpoints,
      best_metric=config.train.best_metric,
      best_mode='min' if 'opis' in config.train.best_metric else 'max')
  try:
    newest = checkpoints.newest_config()
    if newest is not None:  # another run's workdir: refused before building
      checkpoint_lib.check_same_run(newest[1], config_dict, workdir)
    logging.info('Building the input pipeline of %s ...', config.dataset.name)
    inputs = inputs_lib.create_inputs(config, num_devices=mesh.size,
                                      num_processes=jax.process_count(),
                                      process_index=jax.process_index())
    final_split = inputs.final_split(config.eval.final_split)  # before training
    if inputs.val is None and config.train.eval_every_steps > 0:
      logging.warning(
          '%s has no validation side: periodic evaluation and the best '
          'checkpoint use its test classes.', config.dataset.name)
    total_steps = inputs_lib.num_steps(config, inputs.steps_per_epoch)
    logging.info('Building %s and its %s objective ...', config.model.name,
                 config.loss.name)
    state, step_fn, embed_fn = create_training(
        config, num_classes=len(inputs.classes),
        steps_per_epoch=inputs.steps_per_epoch, mesh=mesh)
    # --- Resume, logs, data.
    state, start, saved_margins, resumed = checkpoint_lib.resume(
        checkpoints, state, config_dict, total_steps, workdir)
  except BaseException:
    _close_all([checkpoints.close], failing=True)
    raise
  write_report = functools.partial(evaluator_lib.write_final_report, config,
                                   workdir, inputs, final_split, total_steps)
  # Without a checkpoint the run starts afresh: an earlier attempt's lines
  # (step 0's margins included) are dropped.
  complete = start == total_steps  # a finished run, run again
  try:
    writer = writers.MetricsWriter(workdir, start if resumed else -1,
                                   reevaluate=complete)
    # config.json now, unless it belongs to the final report of the run
    # resumed: then it is replaced with the new report's files, which it
    # describes. (A run started afresh writes it, and its logs, anew.)
    reported = os.path.exists(os.path.join(workdir, 'metrics.json'))
    if jax.process_index() == 0 and not (resumed and reported):
      writers.write_atomic(os.path.join(workdir, 'config.json'),
                           lambda f: json.dump(config_dict, f, indent=2))
  except BaseException:
    _close_all([checkpoints.close], failing=True)
    raise
  if complete:
    logging.info(
        'The run in %s is already complete (step %d of %d): evaluating its '
        'last checkpoint on %s again.', workdir, start, total_steps,
        final_split.name)
  else:
    logging.info(
        'Training %s %s for %d steps (%d per epoch) on %d devices; '
        'periodic evaluation on %s, final on %s.', config.model.name,
        f'from step {start} (resumed)' if resumed else
        f'from {config.pretrained or "a random initialisation"}',
        total_steps - start, inputs.steps_per_epoch, mesh.size,
        inputs.selection.name, final_split.name)
  batches = pipeline.TrainBatches(inputs.train, inputs.sampler,
                                  inputs.train_transform, start_step=start,
                                  options=inputs_lib.loader_options(config))
  evaluator = evaluator_lib.Evaluator(embed_fn, mesh, config,
                                      inputs.eval_transform)
  margin_sample = margins_lib.margin_sample(config, inputs)
  tcm_margins = None  # (m+, m-) when they come from the data
  if margin_sample is not None:
    tcm_margins = (tuple(saved_margins) if saved_margins is not None else
                   margins_lib.estimate_margins(
                       start, functools.partial(evaluator.embed, state),
                       margin_sample, config, writer))

  def device_batch(batch):
    labels = np.searchsorted(inputs.classes, batch['label']).astype(np.int32)
    return parallel.shard_batch({'image': batch['image'], 'label': labels},
                                mesh)

  def data_state():
    extra = {} if tcm_margins is None else {'tcm_margins': tcm_margins}
    return {**batches.get_state(), **extra}

  # --- The loop: train, log, evaluate, checkpoint.
  import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm.tqdm(total=total_steps, initial=start, unit='step', disable=(
      None if config.train.progress_bar and jax.process_index() == 0
      else True))
  t, margin_every = config.train, config.loss.tcm_from_data.every_steps
  pending = None  # the last step's metrics, checked after the next dispatch
  log_start, log_images = time.perf_counter(), 0
  try:
    for step in range(start + 1, total_steps + 1):
      state, step_metrics = step_fn(state, device_batch(next(batches)),
                                    tcm_margins)
      checkpoints.check_saves()  # a save that failed (a full disk) stops now
      if pending is not None:
        _check_finite(*pending, checkpoints, workdir)
      pending = (step, step_metrics)
      log_images += inputs.sampler.batch_size
      bar.update()
      for callback in callbacks:
        callback(step, state)
      at_end = step == total_steps
      due = lambda every: every > 0 and step % every == 0  # pylint: disable=cell-var-from-loop
      log_now = due(t.log_every_steps) or at_end
      eval_now = due(t.eval_every_steps) and not at_end
      save_now = due(t.checkpoint_every_steps) and not at_end
      if log_now or eval_now or save_now:
        # Nothing is logged, evaluated or saved past a non-finite step.
        _check_finite(*pending, checkpoints, workdir)
      if log_now:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()
                  if k != 'finite'}
        now = time.perf_counter()
        values['images_per_second'] = log_images / (now - log_start)
        log_start, log_images = now, 0
        writer.write(step, 'train', values)
        margins_lib.warn_hard_fractions(step, values)
        bar.set_postfix(loss=f'{values["loss"]:.4f}')
        logging.info('step %d: %s', step, ', '.join(
            f'{k} {v:.4g}' for k, v in values.items()))
      eval_values = None
      if eval_now:
        try:
          eval_values = evaluator.run(state, inputs.selection)
        except ValueError as e:  # e.g. embeddings collapsed early in training
          logging.warning('Step %d: the evaluation failed: %s', step, e)
        else:
          writer.write(step, 'eval', eval_values)
          logging.info('step %d eval: %s', step, eval_values)
      if tcm_margins is not None and not at_end and due(margin_every):
        _check_finite(*pending, checkpoints, workdir)
        tcm_margins = margins_lib.estimate_margins(  # for the next steps
            step, functools.partial(evaluator.embed, state), margin_sample,
            config, writer)
      # Every evaluated step is saved too, for the best-checkpoint policy.
      if save_now or eval_values is not None:
        checkpoints.save(step, state, data_state=data_state(),
                         config=config_dict, metrics=eval_values)
    bar.close()

    # --- The final evaluation, and the last checkpoint.
    final = selected = None
    try:
      # The thresholds of the operating points are chosen on the validation
      # classes too, and measured on the final split (never the reverse).
      calibration = None
      if (config.eval.get('fars') and inputs.val is not None
          and final_split is not inputs.val):
        calibration = evaluator.embed(state, inputs.val)
      final = evaluator_lib.final_evaluation(
          config, workdir, *evaluator.embed(state, final_split),
          tcm_margins=tcm_margins, calibration=calibration)
      if jax.process_index() == 0:  # on disk at once; the baselines come last
        write_report(final, with_baselines=False)
      # The last step is scored on the selection split like the others, so
      # that the best-checkpoint policy and the eval curve never see test.
      selected = final.metrics
      if final_split is not inputs.selection:
        try:
          selected = (evaluator.run(state, inputs.selection)
                      if calibration is None  # else embedded already
                      else evaluator.evaluate(*calibration))
        except ValueError as e:  # as at the other steps: the run goes on
          logging.warning('Step %d: the evaluation of %s failed: %s',
                          total_steps, inputs.selection.name, e)
          selected = None
    except BaseException:
      # Saved without the metrics when the evaluation fails (an untrained
      # model whose embeddings all coincide has no threshold range): the
      # trained state is kept, and the evaluation's error is the one raised.
      if not complete:
        _close_all([lambda: checkpoints.save(
            total_steps, state, data_state=data_state(), config=config_dict)],
                   failing=True)
      raise
    if not complete:  # (a finished run's last step is saved already)
      checkpoints.save(total_steps, state, data_state=data_state(),
                       config=config_dict, metrics=selected)
    if selected is not None:
      writer.write(total_steps, 'eval', selected)
    if selected is not final.metrics:
      writer.write(total_steps, 'test', final.metrics)
  except BaseException:
    _close_all([bar.close, checkpoints.close, writer.close], failing=True)
    raise
  _close_all([bar.close, checkpoints.close, writer.close], failing=False)
  # After the collective save: process 0's slow part (the baselines read the
  # split's images again) keeps no other process waiting at a barrier.
  if jax.process_index() == 0 and config.eval.baselines:
    write_report(final._replace(embeddings=None))  # (saved already)
  return final.metrics


_moved.publish(globals())  # documented, and named in tracebacks, as here

# Old names, for one release.
__getattr__ = _moved.moved(__name__, {
    'tcm_jax.config': ('BACKBONES', 'default_config', 'recipe_config',
                       'load_config', 'check_config', 'with_default_keys'),
    'tcm_jax.data.inputs': ('Inputs', 'create_inputs', 'loader_options'),
    'tcm_jax.optimizer': ('parameter_groups', 'weight_decay_mask',
                          'learning_rate_schedule', 'create_optimizer'),
    'tcm_jax.evaluator': ('embed_split', 'make_embed_fn'),
    'tcm_jax.report': ('results_table', 'load_results', 'load_results_dict'),
    'tcm_jax.margins': ('margins_from_embeddings', 'hard_pair_fractions'),
    'tcm_jax.writers': ('logged_margins',),
})
