r"""Evaluate embeddings from any framework: every metric, a report, the figure.

  python -m tcm_jax.evaluate --embeddings embeddings.npz --out report_dir \
      [--far_range=1e-3,1e-1 | --distance_range=0.2,0.6] [--target_far=1e-2]

The npz holds `embeddings` `[N, D]` and integer `labels` `[N]` (optionally
`ref_embeddings` and `ref_labels`, to rank queries against a separate
gallery), so a model trained anywhere, PyTorch included, can be checked:
`np.savez('embeddings.npz', embeddings=z, labels=y)`. The output folder gets
`metrics.json`, `report.md` and `utility_curves.png`. The work is done by
`tcm_jax.report.evaluate_arrays`, which a notebook can call directly.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags

from tcm_jax import _moved
from tcm_jax import report

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
_BLOCK_SIZE = flags.DEFINE_integer('block_size', None, 'query rows per block.')


def _floats(name: str, values: Sequence[str] | None) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError as e:
    raise app.UsageError(f'--{name} takes numbers, got {values}.') from e


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _EMBEDDINGS.value or not _OUT.value:
    raise app.UsageError('--embeddings and --out are required.')
  arrays = report.load_npz(_EMBEDDINGS.value)
  kwargs: dict[str, Any] = dict(
      far_range=_floats('far_range', _FAR_RANGE.value),
      distance_range=_floats('distance_range', _DISTANCE_RANGE.value),
      beta=_BETA.value, num_thresholds=_NUM_THRESHOLDS.value,
      epsilon=_EPSILON.value, target_far=_TARGET_FAR.value,
      ks=[int(k) for k in _KS.value])
  evaluation = report.evaluate_arrays(
      arrays, _OUT.value, source_name=os.path.basename(_EMBEDDINGS.value),
      block_size=_BLOCK_SIZE.value, **kwargs)
  summary = evaluation.to_dict()
  print(json.dumps({k: summary[k] for k in (
      'recall_at_k', 'map_at_r', 'opis', 'eps_opis', 'calibration_range')}))
  print(f'report: {os.path.join(_OUT.value, "report.md")}')


if __name__ == '__main__':
  app.run(main)
