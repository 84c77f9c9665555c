"""A run's logs: metrics as JSON lines and TensorBoard events, read back.

`MetricsWriter` appends `{'step', 'kind', ...}` records to `metrics.jsonl`
(kinds: `train`, `eval`, `test`, `margins`) and the same scalars to
`tensorboard/`; `logged_margins(workdir)` reads the TCM margins a run
estimated back from its `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os

import jax


class MetricsWriter:
  """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard events.

  Only process 0 writes. On resume, lines past the restored step are dropped
  (those steps are trained again); `resumed_step=-1` (a run started afresh)
  drops every line of an earlier attempt.

  Examples:
    >>> import tempfile
    >>> from tcm_jax import writers
    >>> workdir = tempfile.mkdtemp()
    >>> writer = writers.MetricsWriter(workdir, resumed_step=-1)
    >>> writer.write(0, 'margins', {'margin_pos': 0.6, 'margin_neg': 0.4})
    >>> writer.close()
    >>> writers.logged_margins(workdir)
    [{'step': 0, 'margin_pos': 0.6, 'margin_neg': 0.4}]
  """

  def __init__(self, workdir: str, resumed_step: int):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self._path):
      with open(self._path) as f:
        kept = [line for line in f if _logged_step(line) <= resumed_step]
      with open(self._path, 'w') as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                      purge_step=resumed_step + 1)

  def write(self, step: int, kind: str, values: dict[str, float]) -> None:
    """One record of `values` at `step`, of `kind`."""
    if not self._active:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')
    for key, value in values.items():
      self._tensorboard.add_scalar(f'{kind}/{key}', value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self._active:
      self._tensorboard.close()


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; a line cut short by a kill is dropped."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError):
    return math.inf


def logged_margins(workdir: str) -> list[dict[str, float]]:
  """The TCM margins a run estimated from the data, from its metrics.jsonl.

  One `{'step', 'margin_pos', 'margin_neg', 'num_samples'}` per estimate
  (empty for margins fixed in the config).

  Examples:
    >>> import json, os, tempfile
    >>> from tcm_jax import writers
    >>> workdir = tempfile.mkdtemp()
    >>> with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    ...   for record in ({'step': 0, 'kind': 'margins', 'margin_pos': 0.6,
    ...                   'margin_neg': 0.4, 'num_samples': 100},
    ...                  {'step': 5, 'kind': 'train', 'loss': 1.0}):
    ...     _ = f.write(json.dumps(record) + '\\n')
    >>> writers.logged_margins(workdir)
    [{'step': 0, 'margin_pos': 0.6, 'margin_neg': 0.4, 'num_samples': 100}]
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  found = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a kill
        continue
      if record.get('kind') == 'margins':
        found.append({k: v for k, v in record.items() if k != 'kind'})
  return found
