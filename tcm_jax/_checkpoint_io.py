"""One step of a tcm_jax checkpoints directory, read back and checked.

For `tcm_jax.checkpoint`: its items (`ITEMS`), Orbax's manager made to start
despite a damaged step (`Manager`), and `read_step`, which restores items of
one step and checks them against the step's `checksums` item.
"""

from __future__ import annotations

from typing import Any, Mapping

from absl import logging
from etils import epath
import orbax.checkpoint as ocp

from tcm_jax import _checksums

ITEMS = ('state', 'data_state', 'config', 'checksums')


class Manager(ocp.CheckpointManager):
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


def saved_with_checksums(step_dir: epath.Path) -> bool:
  """Whether the step in `step_dir` was written with a `checksums` item.

  As its metadata (Orbax's `_CHECKPOINT_METADATA`, which names the items)
  says, not as its folders do: a deleted `checksums` folder is damage. A
  step whose metadata cannot be read counts as written with them.

  Examples:
    >>> saved_with_checksums(epath.Path('/no/such/checkpoint/7'))
    True
  """
  try:
    handlers = ocp.metadata.get_step_metadata(step_dir).item_handlers
  except Exception:  # pylint: disable=broad-exception-caught
    return True  # (ValueError when missing or unreadable)
  return not isinstance(handlers, Mapping) or 'checksums' in handlers


def read_step(manager: ocp.CheckpointManager, step: int,
              items: Mapping[str, Any]) -> Any:
  """Restores `items` of one step, checked against its checksums.

  The state (if among `items`) must match its checksums and be finite, the
  JSON items their digests. A step written before tcm_jax saved checksums is
  accepted on the finite check alone, with a warning.

  Args:
    manager: the checkpoints directory's manager (with `ITEMS`).
    step: the step to read.
    items: Orbax's restore arguments by item: `state`, `data_state`,
      `config` (not `checksums`, which this adds).

  Returns:
    Orbax's `Composite` of the items.

  Raises:
    DamagedCheckpointError: the step's metadata lists a `checksums` item that
      is missing, or what was read differs from the checksums or is not
      finite.
    Exception: whatever Orbax and TensorStore raise for files they cannot
      read.

  Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> from tcm_jax.checkpoint import Checkpointer
    >>> workdir = tempfile.TemporaryDirectory()
    >>> with Checkpointer(workdir.name) as ckpt:
    ...   _ = ckpt.save(1, {'w': np.ones(2)}, data_state={'step': 1},
    ...                 config={})
    >>> manager = Manager(epath.Path(workdir.name), item_names=ITEMS)
    >>> read_step(manager, 1, {'data_state': ocp.args.JsonRestore()}).data_state
    {'step': 1}
    >>> manager.close(); workdir.cleanup()
  """
  step_dir = epath.Path(manager.directory) / str(step)
  checked = saved_with_checksums(step_dir)
  missing = checked and not (step_dir / 'checksums').exists()
  args = dict(items)
  if checked and not missing:
    args['checksums'] = ocp.args.JsonRestore()
  # Read even without its checksums: Orbax's restore ends in a barrier of
  # all processes, which each must reach, whatever it then finds.
  restored = manager.restore(step, args=ocp.args.Composite(**args))
  if missing:
    raise _checksums.DamagedCheckpointError(
        'its checksums item is missing, although the step\'s metadata lists '
        'it')
  checksums = restored['checksums'] if checked else None
  if 'state' in items:
    _checksums.verify_state(restored['state'], checksums)
    if not checked:
      logging.warning(
          'The checkpoint at step %d in %s has no checksums (written before '
          'tcm_jax saved them): accepted on the finite check only.', step,
          manager.directory)
  for item in ('data_state', 'config'):
    if item in items:
      _checksums.verify_json(item, restored[item], checksums)
  return restored
