"""The processes of a multi-process run agreeing on their checkpoints.

For `tcm_jax.checkpoint`: each process reads the checkpoints itself and may
find one damaged that the others read well; `all_read` makes them accept a
step or fall back past it together, and `same_everywhere` makes them agree
on what a save does. Each is a collective when there are several processes
(every process calls it, whatever it found), and a mere comparison in a
single process.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

Gather = Callable[[Sequence[int]], np.ndarray]


def gather(row: Sequence[int]) -> np.ndarray:
  """Each process's `row` of integers, one row per process, in process order.

  A collective when there are several processes (every process must call
  it, with rows of one length); in one process, just its row.

  Examples:
    >>> gather([3, 1])
    array([[3, 1]], dtype=int32)
  """
  row = np.asarray(row, np.int32)
  if jax.process_count() == 1:
    return row[None]
  return np.asarray(multihost_utils.process_allgather(row)).reshape(
      jax.process_count(), row.size)


def all_read(step: int | None, ok: bool, directory: str,
             gather_rows: Gather | None = None) -> bool:
  """Whether every process read checkpoint `step` and found it sound.

  Every process calls it for each step it tries, then once with None (no
  steps left), so that all make as many calls, and all accept a step or
  all fall back past it.

  Args:
    step: the step this process tried; None once it has none left.
    ok: whether this process read it and found it sound.
    directory: the checkpoints' directory, for the message.
    gather_rows: `gather` (for tests: a stand-in for several processes).

  Raises:
    RuntimeError: the processes try different steps (they see different
      checkpoints in `directory`).

  Examples:
    >>> import numpy as np
    >>> two = lambda other: lambda row: np.array([row, other])
    >>> all_read(6, True, '/ckpt', gather_rows=two([6, 1]))
    True
    >>> all_read(6, True, '/ckpt', gather_rows=two([6, 0]))
    False
    >>> all_read(6, True, '/ckpt', gather_rows=two([3, 1]))
    Traceback (most recent call last):
    ...
    RuntimeError: The processes see different checkpoints in /ckpt: the steps they try are [6, 3] (one per process; -1: none left).
  """
  mine = -1 if step is None else step
  rows = (gather_rows or gather)([mine, ok])
  if np.any(rows[:, 0] != mine):
    raise RuntimeError(
        f'The processes see different checkpoints in {directory}: the steps '
        f'they try are {rows[:, 0].tolist()} (one per process; -1: none '
        'left).')
  return bool(np.all(rows[:, 1]))


def same_everywhere(row: Sequence[int], what: str,
                    gather_rows: Gather | None = None) -> None:
  """Fails unless every process has the same `row` (what it is about to do).

  Args:
    row: integers that say what this process is about to do.
    what: what they describe, for the message.
    gather_rows: `gather` (for tests: a stand-in for several processes).

  Raises:
    RuntimeError: naming `what` and each process's row.

  Examples:
    >>> import numpy as np
    >>> same_everywhere([4, 3], 'the save',
    ...                 gather_rows=lambda row: np.array([row, row]))
    >>> same_everywhere([4, 3], 'the save',
    ...                 gather_rows=lambda row: np.array([row, [4, 6]]))
    Traceback (most recent call last):
    ...
    RuntimeError: The processes disagree on the save: [[4, 3], [4, 6]] (one row per process).
  """
  rows = (gather_rows or gather)(row)
  if np.any(rows != rows[0]):
    raise RuntimeError(f'The processes disagree on {what}: {rows.tolist()} '
                       '(one row per process).')
