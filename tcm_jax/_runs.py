"""An earlier run's checkpoints: resuming it, or starting from its weights.

For `tcm_jax.checkpoint`, which exports these: `resume` and `check_same_run`
(the trainer resuming its own workdir) and `load_run_weights` (another run
starting from this one's encoder).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from absl import logging
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from tcm_jax import _checkpoint_io
from tcm_jax import _checksums
from tcm_jax import config as config_lib

if TYPE_CHECKING:  # in annotations only: it imports this module
  from tcm_jax.checkpoint import Checkpointer


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
    >>> from tcm_jax.checkpoint import Checkpointer
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
  manager = _checkpoint_io.Manager(
      epath.Path(directory), item_names=_checkpoint_io.ITEMS) if (
          os.path.isdir(directory)) else None
  steps = [] if manager is None else list(manager.all_steps())
  if not steps or (step is not None and step not in steps):
    raise FileNotFoundError(
        f'No tcm_jax checkpoint at {path!r} (expected a run\'s workdir, its '
        f'checkpoints/ directory or one step\'s directory in it).')
  if step is None:
    step = steps[-1]
  try:
    restored = _checkpoint_io.read_step(manager, step, {
        'state': ocp.args.StandardRestore(),
        'config': ocp.args.JsonRestore()})
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f'The checkpoint at step {step} in {directory} cannot be read '
        f'({_checksums.short(error)}); name another step\'s directory.'
    ) from error
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
    >>> from tcm_jax import config as config_lib
    >>> from tcm_jax.checkpoint import Checkpointer, json_safe
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
    >>> from tcm_jax.checkpoint import json_safe
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
