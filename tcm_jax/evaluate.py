r"""Evaluate embeddings from any framework: every metric, a report, the figure.

  python -m tcm_jax.evaluate --embeddings embeddings.npz --out report_dir \
      [--far_range=1e-3,1e-1 | --distance_range=0.2,0.6] [--target_far=1e-2]

The npz holds `embeddings` `[N, D]` and integer `labels` `[N]` (optionally
`ref_embeddings` and `ref_labels`, to rank queries against a separate
gallery), so a model trained anywhere, PyTorch included, can be checked:
`np.savez('embeddings.npz', embeddings=z, labels=y)`. The output folder gets
`metrics.json` (the machine-readable results), `report.md` and
`utility_curves.png`, and the verification operating points over all pairs
at `--fars` (TAR at each FAR, EER, ROC AUC: `det_curve.png`,
`class_rates.png`); with `--calibration_embeddings` (another npz of
`embeddings` and `labels`, e.g. held-out samples of the training classes),
the FAR and FRR that thresholds chosen there reach here
(`calibration_transfer.png`); the command prints the metrics as the trainer does (a
table) and where the files are. The work is done by
`tcm_jax.report.evaluate_arrays`, which a notebook can call directly.

A mistake (a missing or unreadable file, an `--out` that cannot be written,
a malformed flag) is one line, `error: ...`, naming the flag or the file,
and is found before any evaluation; `--verbose` shows the traceback.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags

from tcm_jax import _cli
from tcm_jax import _moved
from tcm_jax import report
from tcm_jax.metrics import _operating_points
from tcm_jax.metrics import advanced

# Old names, for one release.
__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.report': ('PLOT_THRESHOLDS', 'evaluate_arrays', 'load_npz',
                        'worst_classes', 'write_report'),
     'tcm_jax.metrics.advanced': ('curves_from_counts',)})

_EMBEDDINGS = flags.DEFINE_string(
    'embeddings', None, 'npz with embeddings [N, D] and labels [N].')
_OUT = flags.DEFINE_string('out', None, 'output folder for the report.')
_FAR_RANGE = flags.DEFINE_list(
    'far_range', ['1e-3', '1e-1'], 'global FAR bounds of the calibration range.')
_DISTANCE_RANGE = flags.DEFINE_list(
    'distance_range', None, 'explicit distance range; overrides far_range.')
_BETA = flags.DEFINE_float('beta', 1.0, 'F-beta weight of sensitivity.')
_NUM_THRESHOLDS = flags.DEFINE_integer('num_thresholds', 101,
                                       'thresholds over the range.')
_EPSILON = flags.DEFINE_float('epsilon', 0.1, 'worst-class fraction.')
_TARGET_FAR = flags.DEFINE_float('target_far', 1e-2,
                                 'global FAR of the one global threshold.')
_KS = flags.DEFINE_list('ks', ['1', '2', '4', '8'], 'Recall@K values.')
_BLOCK_SIZE = flags.DEFINE_integer(
    'block_size', None,
    'query rows per block (not used by --engine=histogram on CPU).')
_ENGINE = flags.DEFINE_enum(
    'engine', 'exact', ['exact', 'histogram'],
    "'exact': two passes, thresholds anywhere; 'histogram': one pass, "
    'thresholds on a grid of 2**-14 (faster).')
_FARS = flags.DEFINE_list(
    'fars', ['1e-4', '1e-3', '1e-2', '1e-1'],
    'target FARs of the verification operating points (TAR at each, over '
    'all pairs, with the EER, ROC AUC and DET curve); empty: none.')
_CALIBRATION = flags.DEFINE_string(
    'calibration_embeddings', None,
    'npz (embeddings, labels) of another set to choose the thresholds at '
    '--fars on; the report gives the FAR and FRR they reach on --embeddings.')


def _pair(name: str, values: Sequence[str] | None
          ) -> tuple[float, float] | None:
  """A `--name=low,high` flag as two floats (None when not given)."""
  if values is None:
    return None
  try:
    low, high = (float(v) for v in values)
  except ValueError:
    raise app.UsageError(
        f'--{name} takes two numbers, low,high; got '
        f'{",".join(values)!r}.') from None
  return low, high


def _fars(values: Sequence[str]) -> tuple[float, ...] | None:
  """`--fars` as target FARs (None when empty)."""
  if not values:
    return None
  try:
    return _operating_points.check_fars([float(v) for v in values])
  except ValueError as e:
    raise app.UsageError(f'--fars takes target FARs in (0, 1], '
                         f'comma-separated; got {",".join(values)!r} '
                         f'({e}).') from None


def _positive_ints(name: str, values: Sequence[str]) -> list[int]:
  """A `--name=1,2,4` flag as positive integers."""
  bad = [v for v in values if not (v.strip().isdigit() and int(v) > 0)]
  if bad or not values:
    raise app.UsageError(
        f'--{name} takes positive integers, comma-separated; got '
        f'{",".join(values)!r}' + (f' ({bad[0]!r} is not one).' if bad
                                   else '.'))
  return [int(v) for v in values]


def _nearest_existing(path: str) -> str:
  """`path`, or its nearest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.lexists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _check_out_dir(path: str, name: str = '--out') -> None:
  """A folder the report can be written into (made later if missing).

  Raises:
    ValueError: `path`, or the nearest of its parents that exists, is a
      file, or that folder cannot be written in.
  """
  subject = f'{name}={path}'
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(
        f'{subject} is a file, not a folder: give a folder for '
        f'{", ".join(report.REPORT_FILES)}.')
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    raise ValueError(f'{subject}: {existing} is a file, not a folder.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ValueError(
        f'{subject}: cannot write in {existing} ({e.strerror}).') from None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _EMBEDDINGS.value or not _OUT.value:
    raise app.UsageError('--embeddings and --out are required.')
  kwargs: dict[str, Any] = dict(
      far_range=_pair('far_range', _FAR_RANGE.value),
      distance_range=_pair('distance_range', _DISTANCE_RANGE.value),
      beta=_BETA.value, num_thresholds=_NUM_THRESHOLDS.value,
      epsilon=_EPSILON.value, target_far=_TARGET_FAR.value,
      ks=_positive_ints('ks', _KS.value), engine=_ENGINE.value)
  options = {k: v for k, v in kwargs.items() if k != 'ks'}
  try:  # the flags before any work, named as flags
    advanced.check_options(**options)
  except (ValueError, TypeError) as e:
    raise app.UsageError(f'--{e}') from None
  if _BLOCK_SIZE.value is not None and _BLOCK_SIZE.value < 1:
    raise app.UsageError(
        f'--block_size must be a positive number of rows, got '
        f'{_BLOCK_SIZE.value}.')
  fars = _fars(_FARS.value)
  if _CALIBRATION.value and fars is None:
    raise app.UsageError('--calibration_embeddings needs --fars, the target '
                         'FARs whose thresholds it chooses.')
  _check_out_dir(_OUT.value)
  arrays = report.load_npz(_EMBEDDINGS.value,
                           name=f'--embeddings={_EMBEDDINGS.value}')
  calibration, calibration_name = None, None
  if _CALIBRATION.value:
    calibration = report.load_npz(
        _CALIBRATION.value,
        name=f'--calibration_embeddings={_CALIBRATION.value}')
    calibration_name = os.path.basename(_CALIBRATION.value)
    if calibration['embeddings'].shape[1:] != arrays['embeddings'].shape[1:]:
      raise app.UsageError(
          f'--calibration_embeddings={_CALIBRATION.value} holds embeddings '
          f'of dimension {calibration["embeddings"].shape[1:]}, '
          f'--embeddings={_EMBEDDINGS.value} '
          f'{arrays["embeddings"].shape[1:]}: they must come from one model.')
  source_name = os.path.basename(_EMBEDDINGS.value)
  try:
    evaluation = report.evaluate_arrays(
        arrays, _OUT.value, source_name=source_name,
        block_size=_BLOCK_SIZE.value, fars=fars, calibration=calibration,
        calibration_name=calibration_name or 'the calibration set', **kwargs)
  except (ValueError, TypeError) as e:  # what the arrays hold: name the file
    files = f'--embeddings={_EMBEDDINGS.value}' + (
        f' or --calibration_embeddings={_CALIBRATION.value}'
        if _CALIBRATION.value else '')
    raise ValueError(f'{files}: {e}') from e
  values, _ = report.load_results_dict(evaluation.to_dict())
  print(report.results_table(values, column=source_name,
                             epsilon=evaluation.epsilon))
  print(report.paths_text(_OUT.value))


if __name__ == '__main__':
  _cli.run(main)
