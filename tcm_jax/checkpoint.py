"""The trainer's checkpoints: train state, data-iterator state and config.

`Checkpointer` wraps Orbax's `CheckpointManager`. Every step directory holds
four items: `state` (the train-state pytree), `data_state`, `config` and
`checksums` (all three JSON: the SHA-256 of each array of the state, see
`state_checksums`). Saves are asynchronous; retention keeps the last `keep`
checkpoints and the best one by a metric; `restore_latest` falls back past
checkpoints that cannot be read or that fail their checks (a checksum, or
a non-finite value: Orbax and TensorStore do not checksum what they read,
so a flipped bit would otherwise restore without a word). A write that
fails (a full disk) raises `tcm_jax.writers.RunIOError`, naming the step,
the directory and the cause. Every process of a multi-process run calls
every method (on a file system they share): Orbax coordinates which process
writes what.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from typing import Any, Mapping, NamedTuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tcm_jax import _checks
from tcm_jax import config as config_lib
from tcm_jax import writers

ITEMS = ('state', 'data_state', 'config', 'checksums')


class DamagedCheckpointError(ValueError):
  """A checkpoint read back, but what it holds is not what was saved."""


def _leaf_key(path) -> str:
  """A leaf's path as its names, e.g. 'params/encoder/head/proj/kernel/value'.

  The same whether the tree is read onto a target (dataclasses, nnx.State)
  or as Orbax's nested dicts.
  """
  return '/'.join(re.findall(r'\w+', jax.tree_util.keystr(path)))


def _host_value(leaf: Any) -> np.ndarray | None:
  """The leaf as one NumPy array (None: it is spread over other processes)."""
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        return None
      leaf = leaf.addressable_data(0)
  return np.asarray(leaf)


def _digest(value: np.ndarray) -> str:
  digest = hashlib.sha256(f'{value.dtype.str}{value.shape}'.encode())
  digest.update(np.ascontiguousarray(value).data)
  return digest.hexdigest()


def state_checksums(state: Any) -> dict[str, str]:
  """The SHA-256 of each array of `state` (its dtype, shape and bytes).

  Keyed by the leaf's path (`'params/encoder/...'`). An array sharded over
  several processes, and not replicated, is left out (no process holds it
  whole); the trainer's state is replicated.

  Examples:
    >>> import numpy as np
    >>> sums = state_checksums({'w': np.zeros(3, np.float32)})
    >>> sorted(sums), len(sums['w'])
    (['w'], 64)
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    value = _host_value(leaf)
    if value is not None:
      sums[_leaf_key(path)] = _digest(value)
  return sums


def verify_state(state: Any, checksums: Mapping[str, str] | None) -> int:
  """Fails unless every array of `state` matches its checksum and is finite.

  Args:
    state: a restored state.
    checksums: `state_checksums` of the state that was saved; None for a
      checkpoint written before tcm_jax saved them (then only the finite
      check applies).

  Returns:
    How many arrays were checked.

  Raises:
    DamagedCheckpointError: naming the first arrays that differ from what
      was saved, or that hold NaN or infinite values.

  Examples:
    >>> import numpy as np
    >>> saved = {'w': np.ones(3, np.float32)}
    >>> sums = state_checksums(saved)
    >>> verify_state(saved, sums)
    1
    >>> verify_state({'w': np.array([1, 1, 1.5], np.float32)}, sums)
    Traceback (most recent call last):
    ...
    tcm_jax.checkpoint.DamagedCheckpointError: 1 of 1 arrays differ from their checksums at save time: w
  """
  differ, non_finite, leaves = [], [], 0
  found = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    value = _host_value(leaf)
    if value is None:
      continue
    key, leaves = _leaf_key(path), leaves + 1
    if checksums is not None:
      found.add(key)
      if checksums.get(key) != _digest(value):
        differ.append(key)
    if value.dtype.kind in 'fc' and not np.all(np.isfinite(value)):
      non_finite.append(key)
  missing = sorted(set(checksums or ()) - found)
  if differ or missing:
    listed = ', '.join((differ + missing)[:3])
    more = ', ...' if len(differ) + len(missing) > 3 else ''
    raise DamagedCheckpointError(
        f'{len(differ) + len(missing)} of {len(checksums)} arrays differ from '
        f'their checksums at save time: {listed}{more}')
  if non_finite:
    raise DamagedCheckpointError(
        f'{len(non_finite)} of {leaves} arrays hold NaN or infinite values: '
        f'{", ".join(non_finite[:3])}{", ..." if len(non_finite) > 3 else ""}')
  return leaves


def _short(error: BaseException) -> str:
  """An error as one short line: its type and its message's first line."""
  lines = str(error).strip().splitlines()
  first = lines[0] if lines else ''
  if len(first) > 300:
    first = first[:297] + '...'
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def json_safe(obj: Any) -> Any:
  """`obj` as plain JSON values: tuples become lists, arrays Python values.

  Args:
    obj: nested mappings, lists and tuples of `None`, bools, numbers,
      strings, and NumPy or JAX scalars and arrays.

  Returns:
    The same nesting of dicts (string keys), lists and Python scalars.

  Raises:
    TypeError: for any other type, which JSON cannot store.

  Examples:
    >>> import numpy as np
    >>> json_safe({'sizes': (64, 32), 'lr': np.float32(0.5), 'seed': None})
    {'sizes': [64, 32], 'lr': 0.5, 'seed': None}
  """
  if isinstance(obj, Mapping):
    return {str(key): json_safe(value) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(value) for value in obj]
  if hasattr(obj, '__array__'):  # NumPy and JAX scalars and arrays.
    return np.asarray(obj).tolist()
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  raise TypeError(
      f'json_safe expects mappings, lists, tuples, None, bools, numbers, '
      f'strings or arrays; received {type(obj).__name__}: {obj!r}.')


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


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, taking a step's unreadable metrics file as no metrics.

  Orbax reads every step's metrics when it starts; one truncated metrics file
  would stop it from starting at all, and so from saving. Without metrics the
  step is kept only while it is among the last `keep`.
  """

  def metrics(self, step: int) -> Any:
    try:
      return super().metrics(step)
    except (OSError, ValueError) as error:
      logging.warning('Metrics of the checkpoint at step %d in %s cannot be '
                      'read (%r); taking them as missing.', step,
                      self.directory, error)
      return None


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
      ValueError: if `metrics` lacks `best_metric`.
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
    if latest is not None and step <= latest:
      # A rerun retraining past checkpoints that restore_latest could not
      # read replaces them (set aside, never deleted) instead of leaving the
      # run without a readable checkpoint of these steps.
      newer = [s for s in self._manager.all_steps() if s >= step]
      if set(newer) <= self._unreadable:
        self._set_aside(newer)
        latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      logging.info('Not saving step %d: %s already has a checkpoint at step '
                   '%d.', step, self._manager.directory, latest)
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_state=ocp.args.JsonSave(json_safe(data_state)),
        config=ocp.args.JsonSave(json_safe(config)),
        checksums=ocp.args.JsonSave(state_checksums(state)))
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
    directory and the error) and the one before it is tried.

    Args:
      target: a pytree like the saved state, with `jax.Array` or
        `jax.ShapeDtypeStruct` leaves; the restored arrays get their
        shardings.

    Returns:
      The checkpoint, or None if the directory has none.

    Raises:
      RuntimeError: if there are checkpoints but none can be read; the
        message lists each step's error.

    Examples: see the class example.
    """
    self._wait()
    failures = []
    for step in reversed(self._manager.all_steps()):
      try:
        restored = self._restore_step(step, target)
      # Damage surfaces as TensorStore ValueErrors, JSON errors, missing
      # files, checksums that differ and more; all mean this step cannot be
      # read.
      except Exception as error:  # pylint: disable=broad-exception-caught
        logging.warning('Cannot read the checkpoint at step %d in %s (%s); '
                        'trying the one before.', step,
                        self._manager.directory, _short(error))
        failures.append(f'step {step}: {_short(error)}')
        self._unreadable.add(step)
        continue
      return restored
    if failures:
      raise RuntimeError(
          f'No checkpoint in {self._manager.directory} can be read ('
          f'{"; ".join(failures)}); move the damaged steps aside to start '
          'afresh, or use a new --workdir.')
    return None

  def _has_item(self, step: int, item: str) -> bool:
    return (epath.Path(self._manager.directory) / str(step) / item).exists()

  def _restore_step(self, step: int, target: Any) -> Restored:
    """One step, its state checked against its checksums (if it has them)."""
    items = dict(state=ocp.args.StandardRestore(target),
                 data_state=ocp.args.JsonRestore(),
                 config=ocp.args.JsonRestore())
    checked = self._has_item(step, 'checksums')  # (not before tcm_jax 0.3)
    if checked:
      items['checksums'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    verify_state(restored.state, restored.checksums if checked else None)
    return Restored(step, restored.state, restored.data_state,
                    restored.config)

  def newest_config(self) -> tuple[int, dict] | None:
    """`(step, config)` of the newest checkpoint whose config can be read.

    Only the config (JSON) is read: a run can compare it with its own before
    restoring any array. None if no checkpoint's config can be read.
    """
    self._wait()
    for step in reversed(self._manager.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))
      except Exception:  # pylint: disable=broad-exception-caught
        continue  # restore_latest says why, step by step
      if isinstance(restored.config, dict):
        return step, restored.config
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories to `<directory>.unreadable/`."""
    self._manager.wait_until_finished()
    directory = epath.Path(self._manager.directory)
    aside = directory.parent / f'{directory.name}.unreadable'
    # One process moves them (the file system is shared); all wait for it.
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / f'{step}-{int(time.time())}'
        logging.warning('Moving the unreadable checkpoint at step %d to %s, '
                        'so that this run saves the step again.', step, target)
        (directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('tcm_jax checkpoint set aside')
    self._unreadable.difference_update(steps)
    self._manager.reload()

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


class RunWeights(NamedTuple):
  """An earlier run's encoder, read back by `load_run_weights`.

  Attributes:
    params: the encoder's parameters, `{'backbone': ..., 'head': ...}`, as
      nested dicts of NumPy arrays (the head only if it was asked for).
    model_state: the encoder's other state (BatchNorm statistics), likewise.
    config: the run's config (JSON).
    step: the step of the checkpoint read.
    directory: the step directory read.
  """
  params: dict
  model_state: dict
  config: dict
  step: int
  directory: str


def _checkpoint_step(path: str) -> tuple[str, int | None]:
  """`(checkpoints directory, step or None)` of a workdir, a checkpoints
  directory or one step's directory."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  name = os.path.basename(path.rstrip(os.sep))
  if name.isdigit() and os.path.isdir(os.path.join(path, 'state')):
    return os.path.dirname(path), int(name)
  return path, None


def _unboxed(tree: Any) -> Any:
  """Nested dicts with nnx's `{'value': array}` leaves as plain arrays."""
  if isinstance(tree, Mapping):
    if set(tree) == {'value'} and not isinstance(tree['value'], Mapping):
      return np.asarray(tree['value'])
    return {key: _unboxed(value) for key, value in tree.items()}
  return np.asarray(tree)


def load_run_weights(path: str, *, head: bool = False) -> RunWeights:
  """The encoder of an earlier tcm_jax run, to start another run from.

  Args:
    path: the run's workdir, its `checkpoints/` directory (both: the latest
      checkpoint, where the run ended), or one step's directory in it (that
      step; e.g. the run's best, which `report.md` and the log name). The
      latest, not the best by the checkpoints' metrics: for a dataset
      without validation classes those metrics are the test classes', which
      must not choose a model.
    head: also return the embedding head (pooling, normalisation,
      projection); without it only the backbone is returned.

  Returns:
    `RunWeights`. The class proxies and optimizer state are not returned:
    the new run has its own objective.

  Raises:
    FileNotFoundError: no tcm_jax checkpoint at `path`.
    ValueError: the checkpoint cannot be read, is damaged (its checksums)
      or holds no encoder.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> workdir = tempfile.mkdtemp()
    >>> params = {'encoder': {'backbone': {'w': {'value': np.ones(2)}},
    ...                       'head': {'b': {'value': np.zeros(3)}}}}
    >>> with Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    ...   _ = ckpt.save(7, {'params': params, 'model_state': {}},
    ...                 data_state={'step': 7}, config={'seed': 0})
    >>> weights = load_run_weights(workdir)
    >>> weights.step, weights.params
    (7, {'backbone': {'w': array([1., 1.])}})
  """
  directory, step = _checkpoint_step(path)
  manager = _Manager(epath.Path(directory), item_names=ITEMS) if (
      os.path.isdir(directory)) else None
  steps = [] if manager is None else list(manager.all_steps())
  if not steps or (step is not None and step not in steps):
    raise FileNotFoundError(
        f'No tcm_jax checkpoint at {path!r} (expected a run\'s workdir, its '
        f'checkpoints/ directory or one step\'s directory in it).')
  if step is None:
    step = steps[-1]
  items = dict(state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore())
  checked = os.path.isdir(os.path.join(directory, str(step), 'checksums'))
  if checked:
    items['checksums'] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    verify_state(restored.state, restored.checksums if checked else None)
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f'The checkpoint at step {step} in {directory} cannot be read '
        f'({_short(error)}); name another step\'s directory.') from error
  finally:
    manager.close()
  state = restored.state
  encoder = (state.get('params') or {}).get('encoder') if isinstance(
      state, Mapping) else None
  if not isinstance(encoder, Mapping) or 'backbone' not in encoder:
    raise ValueError(f'The checkpoint at step {step} in {directory} holds no '
                     'encoder parameters (params.encoder.backbone).')
  parts = ('backbone', 'head') if head else ('backbone',)
  model_state = _unboxed(state.get('model_state') or {})
  return RunWeights(
      params={k: _unboxed(encoder[k]) for k in parts if k in encoder},
      model_state={k: v for k, v in model_state.items() if k in parts},
      config=restored.config, step=int(step),
      directory=os.path.join(directory, str(step)))


def resume(checkpoints: Checkpointer, state: Any, config: dict,
           total_steps: int, workdir: str) -> tuple[Any, int, Any, bool]:
  """`(state, step, saved TCM margins or None, resumed)` of a run's workdir.

  The latest readable checkpoint of `checkpoints` restored onto `state`'s
  shardings, or `state` itself at step 0 (`resumed` False) without one.

  Args:
    checkpoints: the run's checkpoints.
    state: the initial train state (the restore target).
    config: the run's config, as JSON (`json_safe(config.to_dict())`).
    total_steps: the steps the run trains.
    workdir: the run's folder, for the messages.

  Returns:
    `(state, step, margins, resumed)`: the restored state and its step, the
    TCM margins the run had estimated from the data (None without), and
    whether a checkpoint was found.

  Raises:
    ValueError: the workdir holds a run of another config (a key outside
      `tcm_jax.config.RESUMABLE` changed; found from the newest
      checkpoint's config before any array is read, and the message lists
      each key with both values) or a checkpoint past the run's last step.
    RuntimeError: there are checkpoints, and none can be read.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> workdir = tempfile.mkdtemp()
    >>> config = json_safe(config_lib.default_config().to_dict())
    >>> with Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    ...   _ = ckpt.save(2, {'w': np.ones(2)}, data_state={'step': 2},
    ...                 config=config)
    ...   state, step, _, resumed = resume(ckpt, {'w': np.zeros(2)}, config,
    ...                                    5, workdir)
    >>> step, resumed, state['w'].tolist()
    (2, True, [1.0, 1.0])
  """
  newest = checkpoints.newest_config()
  if newest is not None:
    # Before any array is read: another model's arrays would not even fit.
    check_same_run(newest[1], config, workdir)
  restored = checkpoints.restore_latest(state)
  if restored is None:
    return state, 0, None, False
  start = restored.step
  data_state = dict(restored.data_state)
  saved_margins = data_state.pop('tcm_margins', None)
  if data_state != {'step': start}:
    raise ValueError(f'checkpoint {start} holds data state '
                     f'{restored.data_state}, not {{"step": {start}}}.')
  changed = check_same_run(restored.config, config, workdir)
  if changed:
    logging.warning('Resuming from step %d with a config that differs in: '
                    '%s', start, ', '.join(changed))
  if start > total_steps:
    raise ValueError(
        f'{workdir} holds a checkpoint at step {start}, past this run\'s '
        f'{total_steps} steps (train.num_steps / train.num_epochs); evaluate '
        'it with python -m tcm_jax.evaluate, or use a new --workdir.')
  logging.info('Resumed from step %d in %s.', start, workdir)
  return restored.state, start, saved_margins, True


def check_same_run(saved: dict, config: dict, workdir: str) -> list[str]:
  """The keys in which `config` differs from a run's `saved` config.

  Raises:
    ValueError: one of them is outside `tcm_jax.config.RESUMABLE`: the
      workdir holds another run. The message lists each such key with its
      saved value and the new one.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> saved = json_safe(config_lib.default_config().to_dict())
    >>> current = json_safe(config_lib.default_config().to_dict())
    >>> current['train']['num_steps'] = 9
    >>> check_same_run(saved, current, '/tmp/run')
    ['train.num_steps']
    >>> current['model']['width'] = 0.5
    >>> check_same_run(saved, current, '/tmp/run')
    Traceback (most recent call last):
    ...
    ValueError: /tmp/run holds a run with another config: model.width 1.0 vs 0.5 (saved vs this run's); resume it with its own config, or use a new --workdir.
  """
  changed, different_run = config_lib.resume_changes(saved, config)
  if different_run:
    raise ValueError(
        f'{workdir} holds a run with another config: '
        f'{config_lib.describe_changes(saved, config, different_run)} (saved '
        "vs this run's); resume it with its own config, or use a new "
        '--workdir.')
  return changed
