"""The trainer's checkpoints: train state, data-iterator state and config.

`Checkpointer` wraps Orbax's `CheckpointManager`. Every step directory holds
four items: `state` (the train-state pytree), `data_state`, `config` and
`checksums` (all three JSON: the SHA-256 of each array of the state, see
`state_checksums`, and of the two other JSON items). Saves are
asynchronous; retention keeps the last `keep` checkpoints and the best one
by a metric; `restore_latest` falls back past checkpoints that cannot be
read or that fail their checks (a checksum, a missing `checksums` item, or a
non-finite value: Orbax and TensorStore do not checksum what they read, so a
flipped bit would otherwise restore without a word). A write that fails (a
full disk) raises `tcm_jax.writers.RunIOError`, naming the step, the
directory and the cause. Every process of a multi-process run calls every
method (on a file system they share): Orbax coordinates which process writes
what, and the processes restore the same step (all accept it, or all fall
back past it) and agree on what each save does.

`resume` and `check_same_run` resume a run's workdir; `load_run_weights`
reads an earlier run's encoder.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, NamedTuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tcm_jax import _agreement
from tcm_jax import _checks
from tcm_jax import _moved
from tcm_jax import _runs
from tcm_jax import writers
from tcm_jax._checkpoint_io import ITEMS
from tcm_jax._checkpoint_io import Manager as _Manager
from tcm_jax._checkpoint_io import read_step as _read_step
from tcm_jax._checksums import DamagedCheckpointError
from tcm_jax._checksums import item_checksums as _item_checksums
from tcm_jax._checksums import json_safe
from tcm_jax._checksums import short as _short
from tcm_jax._checksums import state_checksums
from tcm_jax._checksums import verify_state
from tcm_jax._runs import check_same_run
from tcm_jax._runs import load_run_weights
from tcm_jax._runs import resume
from tcm_jax._runs import RunWeights

__all__ = [
    'Checkpointer',
    'DamagedCheckpointError',
    'Restored',
    'RunWeights',
    'check_same_run',
    'json_safe',
    'load_run_weights',
    'resume',
    'state_checksums',
    'verify_state',
]


class Restored(NamedTuple):
  """One checkpoint, read back by `Checkpointer.restore_latest`.

  Attributes:
    step: the checkpoint's step.
    state: the train-state pytree, its arrays on the target's shardings.
    data_state: the data iterator's JSON state, e.g. `{'step': 120}`.
    config: the run's config as a JSON dict.

  Examples:
    >>> Restored(step=3, state={}, data_state={'step': 3}, config={}).step
    3
  """
  step: int
  state: Any
  data_state: dict
  config: dict


class Checkpointer:
  """Saves and restores a training run's checkpoints in one directory.

  Steps only go up: `save` returns False, writing nothing, for a step at or
  below the latest checkpoint (Orbax would raise for an existing step, and its
  retention would take a lower one for the newest). Unreadable checkpoints
  are never deleted here (they may be repairable); retention ages them out.

  Args:
    directory: where the step directories go; created if missing.
    keep: how many of the most recent checkpoints to keep, at least 1.
    best_metric: a key of the `metrics` given to `save`; the checkpoint with
      its best value is kept as well, however old.
    best_mode: `'max'` or `'min'`: which value of `best_metric` is best.
    async_save: write in the background; `save` returns once arrays are
      copied off the devices.

  Examples:
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> workdir = tempfile.TemporaryDirectory()
    >>> state = {'w': jnp.arange(3.0), 'step': jnp.int32(0)}
    >>> with Checkpointer(workdir.name, keep=1, best_metric='recall') as ckpt:
    ...   print(ckpt.restore_latest(state))
    ...   for step, recall in [(10, 0.9), (20, 0.5), (30, 0.7)]:
    ...     _ = ckpt.save(step, state, data_state={'step': step},
    ...                   config={'lr': 0.1}, metrics={'recall': recall})
    ...   ckpt.wait_until_finished()
    ...   print(ckpt.all_steps(), ckpt.latest_step(), ckpt.best_step())
    ...   print(ckpt.save(30, state, data_state={}, config={}))
    ...   restored = ckpt.restore_latest(state)
    None
    [10, 30] 30 10
    False
    >>> restored.step, restored.data_state, restored.config
    (30, {'step': 30}, {'lr': 0.1})
    >>> workdir.cleanup()
  """

  def __init__(self, directory: str, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = 'max',
               async_save: bool = True):
    # Orbax's TensorStore specs need absolute paths; URLs (gs://) are left be.
    if '://' not in str(directory):
      directory = os.path.abspath(directory)
    path = epath.Path(directory)
    if path.exists() and not path.is_dir():
      raise ValueError(f'directory must be a directory (or not exist yet); '
                       f'received {directory!r}, which is a file.')
    keep = _checks.check_int('keep', keep, 1)
    _checks.check_choice('best_mode', best_mode, ('max', 'min'))
    self._best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric is not None:
      # Older checkpoints may lack the metric (an earlier run tracked another
      # one): they rank worst instead of failing every save.
      worst = -math.inf if best_mode == 'max' else math.inf
      best_fn = lambda metrics: metrics.get(best_metric, worst)
      # Checkpoints without metrics are LatestN's to keep or drop.
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == 'min', n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn also makes Orbax write each step's metrics and answer
        # best_step; retention itself is the policies' alone.
        best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=async_save)
    try:
      self._manager = _Manager(path, item_names=ITEMS, options=options)
    except OSError as error:
      raise writers.io_error('Opening the checkpoints', directory,
                             error) from error
    self._unreadable: set[int] = set()
    self._writing: int | None = None  # the step whose save is in flight

  def save(self, step: int, state: Any, *, data_state: dict, config: dict,
           metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    """Starts writing a checkpoint of `state` at `step`.

    Args:
      step: the training step; saved only if above the latest checkpoint.
      state: the train-state pytree (`jax.Array` leaves, any pytree nodes).
      data_state: the data iterator's state, JSON-able (see `json_safe`).
      config: the run's config as a dict, JSON-able (see `json_safe`).
      metrics: evaluation results, for `best_metric` (which they must then
        contain). Without them the checkpoint stays while among the last
        `keep` only.
      force: passed to Orbax, whose save-decision policy here already saves
        every step above the latest: it changes nothing yet.

    Returns:
      Whether a save was started: False if `step` is not above the latest
      checkpoint.

    Raises:
      ValueError: if `metrics` lacks `best_metric`, or two leaves of `state`
        have the same path (see `state_checksums`).
      RuntimeError: the processes of a multi-process run are at different
        steps or see different checkpoints (nothing is written).
      tcm_jax.writers.RunIOError: this save, or the one before it (saves
        are asynchronous), could not be written; the message names the
        step, the directory and the cause (e.g. No space left on device).

    Examples: see the class example.
    """
    if (self._best_metric is not None and metrics is not None
        and self._best_metric not in metrics):
      raise ValueError(
          f'metrics must contain best_metric {self._best_metric!r}; '
          f'received keys {sorted(metrics)}.')
    step = int(step)
    self._wait()  # the save before, whose failure would surface in Orbax's
    latest = self._manager.latest_step()
    # A rerun retraining past checkpoints that restore_latest could not read
    # replaces them (set aside, never deleted) instead of leaving the run
    # without a readable checkpoint of these steps.
    newer = [s for s in self._manager.all_steps() if s >= step]
    replace = bool(newer) and set(newer) <= self._unreadable
    # Every process, every save: no process may set aside (a collective)
    # or save alone.
    _agreement.same_everywhere(
        [step, -1 if latest is None else latest, replace],
        f'the save of step {step} in {self._manager.directory} (rows: step, '
        'latest step, whether to replace the unreadable ones)')
    if replace:
      self._set_aside(newer)
      latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      logging.info('Not saving step %d: %s already has a checkpoint at step '
                   '%d.', step, self._manager.directory, latest)
      return False
    data_state, config = json_safe(data_state), json_safe(config)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_state=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config),
        checksums=ocp.args.JsonSave(
            _item_checksums(state, data_state, config)))
    metrics = None if metrics is None else json_safe(metrics)
    try:
      started = self._manager.save(step, args=args, metrics=metrics,
                                   force=force)
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise self._write_error(step, error) from error
    if started:
      self._writing = step
    return started

  def _write_error(self, step: int | None,
                   error: BaseException) -> writers.RunIOError:
    """A save that failed, as one line: the step, the cause, the directory."""
    code, words = writers.io_cause(error)
    which = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
    return writers.RunIOError(code, f'Writing {which} failed ({words})',
                              str(self._manager.directory))

  def _wait(self) -> None:
    """Waits for the save in flight; raises its failure as RunIOError."""
    step, self._writing = self._writing, None
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise self._write_error(step, error) from error

  def check_saves(self) -> None:
    """Raises at once if the save in flight has failed (see `save`).

    Cheap (it waits for nothing): the trainer calls it after every step, so
    that a full disk stops the run when the save fails, not one save later.
    """
    if self._writing is not None and not self._manager.is_saving_in_progress():
      self._wait()

  def restore_latest(self, target: Any) -> Restored | None:
    """Reads the newest checkpoint that can be read.

    An unreadable checkpoint is logged (a warning with the step, the
    directory and the error) and the one before it is tried. In a
    multi-process run, a checkpoint that one process cannot read is
    skipped by all.

    Args:
      target: a pytree like the saved state, with `jax.Array` or
        `jax.ShapeDtypeStruct` leaves; the restored arrays get their
        shardings.

    Returns:
      The checkpoint, or None if the directory has none.

    Raises:
      RuntimeError: if there are checkpoints but none can be read; the
        message lists each step's error. Also if the processes of a
        multi-process run see different checkpoints.

    Examples: see the class example.
    """
    self._wait()
    directory = str(self._manager.directory)
    failures = []
    # Then None: every process makes one call of all_read more than it has
    # steps, so that all make as many.
    for step in [*reversed(self._manager.all_steps()), None]:
      restored, error = None, None
      if step is not None:
        try:
          restored = self._restore_step(step, target)
        # Damage surfaces as TensorStore ValueErrors, JSON errors, missing
        # files, checksums that differ and more; all mean this step cannot
        # be read.
        except Exception as caught:  # pylint: disable=broad-exception-caught
          error = caught
      read_by_all = _agreement.all_read(step, error is None, directory)
      if step is None:
        break
      if read_by_all:
        return restored
      why = (_short(error) if error is not None else
             'another process cannot read it')
      logging.warning('Cannot read the checkpoint at step %d in %s (%s); '
                      'trying the one before.', step, directory, why)
      failures.append(f'step {step}: {why}')
      self._unreadable.add(step)
    if failures:
      raise RuntimeError(
          f'No checkpoint in {directory} can be read ('
          f'{"; ".join(failures)}); move the damaged steps aside to start '
          'afresh, or use a new --workdir.')
    return None

  def _restore_step(self, step: int, target: Any) -> Restored:
    """One step, checked against its checksums (if it was saved with them)."""
    restored = _read_step(self._manager, step, {
        'state': ocp.args.StandardRestore(target),
        'data_state': ocp.args.JsonRestore(),
        'config': ocp.args.JsonRestore()})
    return Restored(step, restored.state, restored.data_state,
                    restored.config)

  def newest_config(self) -> tuple[int, dict] | None:
    """`(step, config)` of the newest checkpoint whose config can be read.

    Only the config (JSON, checked against its checksum) is read: a run can
    compare it with its own before restoring any array. None if no
    checkpoint's config can be read.
    """
    self._wait()
    for step in reversed(self._manager.all_steps()):
      try:
        restored = _read_step(self._manager, step,
                              {'config': ocp.args.JsonRestore()})
      except Exception:  # pylint: disable=broad-exception-caught
        continue  # restore_latest says why, step by step
      if isinstance(restored.config, dict):
        return step, restored.config
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories to `<directory>.unreadable/`.

    Every process calls it (`save` makes sure they agree to); process 0
    moves them (the file system is shared) and all wait for it.
    """
    self._manager.wait_until_finished()
    directory = epath.Path(self._manager.directory)
    aside = directory.parent / f'{directory.name}.unreadable'
    error = None
    if jax.process_index() == 0:
      try:
        aside.mkdir(parents=True, exist_ok=True)
        for step in steps:
          target = aside / f'{step}-{int(time.time())}'
          logging.warning('Moving the unreadable checkpoint at step %d to '
                          '%s, so that this run saves the step again.', step,
                          target)
          (directory / str(step)).rename(target)
      except OSError as caught:
        error = caught
    # Reached by every process, whether the move worked or not: it waits for
    # process 0's move, and says how it went.
    moved = bool(np.all(_agreement.gather([error is None])))
    self._manager.reload()
    if error is not None:
      raise writers.io_error('Moving unreadable checkpoints aside',
                             str(aside), error) from error
    if not moved:
      raise RuntimeError(
          f'Process 0 could not move the unreadable checkpoints {steps} of '
          f'{directory} aside to {aside} (its log says why).')
    self._unreadable.difference_update(steps)

  def latest_step(self) -> int | None:
    """The newest checkpoint's step (None if none); see the class example."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps with a checkpoint, ascending; see the class example."""
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step with the best `best_metric`; see the class example.

    None if there is no `best_metric` or no checkpoint has metrics.
    """
    if self._best_metric is None:
      return None
    return self._manager.best_step()

  def wait_until_finished(self) -> None:
    """Blocks until the saves in flight are written; see the class example.

    Raises:
      tcm_jax.writers.RunIOError: the save in flight failed (see `save`).
    """
    self._wait()

  def close(self) -> None:
    """Finishes the saves in flight and releases Orbax's resources.

    Raises:
      tcm_jax.writers.RunIOError: the save in flight failed (see `save`);
        Orbax's resources are released all the same.
    """
    try:
      self._wait()
    finally:
      try:
        self._manager.close()
      except Exception as error:  # pylint: disable=broad-exception-caught
        # A failed save is raised once, by _wait; Orbax raises it again.
        logging.info('Closing the checkpoints in %s: %s',
                     self._manager.directory, _short(error))

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


_moved.publish(globals())  # these functions name this module, not a private one
# `resume`'s annotation names the class; typing.get_type_hints (and the docs)
# resolve it in its own module, which cannot import this one at import time.
_runs.Checkpointer = Checkpointer
