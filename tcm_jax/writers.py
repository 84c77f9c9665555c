"""A run's logs: metrics as JSON lines and TensorBoard events, read back.

`MetricsWriter` appends `{'step', 'kind', ...}` records to `metrics.jsonl`
(kinds: `train`, `eval`, `test`, `margins`) and the same scalars to
`tensorboard/`; `logged_margins(workdir)` reads the TCM margins a run
estimated back from its `metrics.jsonl`. `RunIOError` is how the trainer
reports a file it could not write or read (`io_error`), `write_atomic` how
it replaces one, and `staged_files` how it replaces a set.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator

import jax


class RunIOError(OSError):
  """A file of a run could not be written or read: what, why, and where.

  `strerror` says what failed and why (e.g. 'Writing metrics.jsonl failed
  (No space left on device)'), `filename` is the path, `errno` the system's
  error number when there is one.

  Examples:
    >>> import errno
    >>> from tcm_jax import writers
    >>> error = writers.RunIOError(errno.ENOSPC, 'Writing x failed', '/run/x')
    >>> str(error)
    "Writing x failed: '/run/x'"
  """

  def __str__(self) -> str:
    return f'{self.strerror}: {self.filename!r}'


def io_cause(error: BaseException) -> tuple[int | None, str]:
  """`(errno or None, words)`: why an I/O operation failed.

  The first OSError in the chain of causes, or a TensorStore error's
  `os_error_code` (Orbax reports a full disk as a ValueError holding
  `[os_error_code='28']`), or else the error's first line.

  Examples:
    >>> import errno
    >>> from tcm_jax import writers
    >>> writers.io_cause(OSError(errno.ENOSPC, 'No space left on device'))
    (28, 'No space left on device')
    >>> writers.io_cause(ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']"))
    (28, 'No space left on device')
  """
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, OSError) and current.strerror:
      return current.errno, current.strerror
    match = re.search(r"os_error_code='?(\d+)", str(current))
    if match:
      code = int(match.group(1))
      return code, os.strerror(code)
    current = current.__cause__ or current.__context__
  lines = str(error).strip().splitlines()
  first = lines[0][:300] if lines else ''
  return None, f'{type(error).__name__}: {first}' if first else (
      type(error).__name__)


def io_error(what: str, path: str, error: BaseException) -> RunIOError:
  """A `RunIOError` for `what` (e.g. 'Writing metrics.jsonl') at `path`.

  Examples:
    >>> import errno
    >>> from tcm_jax import writers
    >>> str(writers.io_error('Writing metrics.jsonl', '/run/metrics.jsonl',
    ...                      OSError(errno.ENOSPC, 'No space left on device')))
    "Writing metrics.jsonl failed (No space left on device): '/run/metrics.jsonl'"
  """
  code, words = io_cause(error)
  return RunIOError(code, f'{what} failed ({words})', str(path))


def write_atomic(path: str, write, mode: str = 'w') -> None:
  """Writes `path` whole or not at all: `write(file)` into a temporary file
  beside it, renamed over `path` once written; the old `path` is kept on
  any failure (`RunIOError`, or `write`'s own error).

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import writers
    >>> path = os.path.join(tempfile.mkdtemp(), 'a.txt')
    >>> writers.write_atomic(path, lambda f: f.write('kept'))
    >>> def fail(f):
    ...   f.write('half')
    ...   raise ValueError('failed half way')
    >>> writers.write_atomic(path, fail)
    Traceback (most recent call last):
    ...
    ValueError: failed half way
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('kept', ['a.txt'])
  """
  temporary = f'{path}.tmp-{os.getpid()}'
  try:
    with open(temporary, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())  # on disk before it replaces the old file
    os.replace(temporary, path)
    _sync_folder(os.path.dirname(path))
  except OSError as error:
    raise io_error(f'Writing {os.path.basename(path)}', path, error) from error
  finally:
    with contextlib.suppress(OSError):
      os.remove(temporary)


def replace_files(staged: dict[str, str], folder: str) -> None:
  """Moves each staged file (`{name: path}`, written in full) to
  `folder/name`, in the order given, each flushed to disk first.

  A set of files cannot be replaced in one step: put last the file whose
  presence says the set is complete (the report puts `metrics.json` last).
  Raises the `OSError` of a file that could not be moved; the ones moved
  before it stay.

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import writers
    >>> staging, folder = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = open(os.path.join(staging, 'a.txt'), 'w').write('new')
    >>> writers.replace_files({'a.txt': os.path.join(staging, 'a.txt')},
    ...                       folder)
    >>> open(os.path.join(folder, 'a.txt')).read(), os.listdir(staging)
    ('new', [])
  """
  for path in staged.values():
    with open(path, 'rb+') as f:
      os.fsync(f.fileno())
  for name, path in staged.items():
    os.replace(path, os.path.join(folder, name))
  _sync_folder(folder)


@contextlib.contextmanager
def staged_files(folder: str) -> Iterator[str]:
  """A folder to write a set of files into, which then replace `folder`'s.

  Yields a staging folder (`folder/.report.tmp`, made afresh). When the
  block ends without an error, each file written there is moved over
  `folder/<name>` (`replace_files`), `metrics.json` last (its presence
  says the set is complete); on any error `folder` keeps the files it had.
  An `OSError` is raised as a `RunIOError` ('Writing the report failed')
  naming `folder`.

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import writers
    >>> folder = tempfile.mkdtemp()
    >>> with writers.staged_files(folder) as staging:
    ...   for name in ('metrics.json', 'report.md'):
    ...     _ = open(os.path.join(staging, name), 'w').write('new')
    >>> sorted(os.listdir(folder))
    ['metrics.json', 'report.md']
    >>> with writers.staged_files(folder) as staging:
    ...   _ = open(os.path.join(staging, 'report.md'), 'w').write('newer')
    ...   raise ValueError('the figure failed')
    Traceback (most recent call last):
    ...
    ValueError: the figure failed
    >>> open(os.path.join(folder, 'report.md')).read(), os.listdir(folder)
    ('new', ['metrics.json', 'report.md'])
  """
  staging = os.path.join(folder, '.report.tmp')  # (one writer at a time)
  shutil.rmtree(staging, ignore_errors=True)  # a killed attempt's
  try:
    os.makedirs(staging)
    yield staging
    names = sorted(os.listdir(staging),
                   key=lambda name: (name == 'metrics.json', name))
    replace_files({name: os.path.join(staging, name) for name in names},
                  folder)
  except OSError as error:  # (a staged file's RunIOError: its own cause)
    cause = error.__cause__ if isinstance(error, RunIOError) else None
    raise io_error('Writing the report', folder, cause or error) from error
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _sync_folder(folder: str) -> None:
  """Flushes a folder's entries (renames) to disk where the system can."""
  try:
    descriptor = os.open(folder or '.', os.O_RDONLY)
  except OSError:  # (e.g. Windows: folders cannot be opened)
    return
  try:
    os.fsync(descriptor)
  except OSError:
    pass
  finally:
    os.close(descriptor)


class MetricsWriter:
  """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard events.

  Only process 0 writes. On resume, lines past the restored step are dropped
  (those steps are trained again); `resumed_step=-1` (a run started afresh)
  drops every line of an earlier attempt; `reevaluate=True` (a finished run
  evaluated again) drops the `eval` and `test` lines of `resumed_step` too,
  which the new evaluation writes: when it writes its first line, so that an
  evaluation that fails leaves them as they were.

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

  def __init__(self, workdir: str, resumed_step: int, *,
               reevaluate: bool = False):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._resumed_step = resumed_step
    self._reevaluated = reevaluate  # lines still to drop at the first write
    self._drop_lines(())
    tensorboard = os.path.join(workdir, 'tensorboard')
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    try:
      self._tensorboard = SummaryWriter(tensorboard,
                                        purge_step=resumed_step + 1)
    except OSError as error:
      raise io_error('Creating the TensorBoard log', tensorboard,
                     error) from error
    self._tensorboard_dir = tensorboard

  def write(self, step: int, kind: str, values: dict[str, float]) -> None:
    """One record of `values` at `step`, of `kind`.

    Raises:
      RunIOError: a file could not be written (its path and the cause).
    """
    if not self._active:
      return
    if self._reevaluated:
      self._drop_lines(('eval', 'test'))
      self._reevaluated = False
    try:
      with open(self._path, 'a') as f:
        f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')
    except OSError as error:
      raise io_error('Writing metrics.jsonl', self._path, error) from error
    try:
      for key, value in values.items():
        self._tensorboard.add_scalar(f'{kind}/{key}', value, step)
      self._tensorboard.flush()
    except OSError as error:
      raise io_error('Writing the TensorBoard log', self._tensorboard_dir,
                     error) from error

  def _drop_lines(self, kinds: tuple[str, ...]) -> None:
    """Drops the lines past the resumed step, and its lines of `kinds`."""
    step_kept = self._resumed_step

    def keep(line):
      step = _logged_step(line)
      return step < step_kept or (
          step == step_kept and _logged_kind(line) not in kinds)

    if not os.path.exists(self._path):
      return
    try:
      with open(self._path) as f:
        lines = f.readlines()
    except OSError as error:
      raise io_error('Reading metrics.jsonl', self._path, error) from error
    kept = [line for line in lines if keep(line)]
    if kept != lines:  # whole or not at all: a full disk must not cut them
      write_atomic(self._path, lambda f: f.writelines(kept))

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self._active:
      try:
        self._tensorboard.close()
      except OSError as error:
        raise io_error('Writing the TensorBoard log', self._tensorboard_dir,
                       error) from error


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; a line cut short by a kill is dropped."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError):
    return math.inf


def _logged_kind(line: str) -> str | None:
  try:
    return json.loads(line).get('kind')
  except (ValueError, AttributeError):
    return None


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
