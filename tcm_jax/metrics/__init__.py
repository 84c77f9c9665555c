"""Pure metric functions: threshold consistency (OPIS), retrieval, calibration,
verification operating points (TAR at FARs, EER, ROC AUC), calibration
transfer between sets, and bootstrap confidence intervals over classes.

Each metric takes a `[Q, R]` similarity matrix with labels (references
default to the queries, each left out of its own ranking) and streams it in
blocks, so that evaluation sets too large for one matrix are measured
exactly; `evaluate_embeddings` computes all of them from embeddings without
building the matrix. The engine they share is in `tcm_jax.metrics.advanced`.

Importing this package pulls in only jax and numpy.

Examples:
  >>> import numpy as np
  >>> from tcm_jax import metrics
  >>> s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
  ...               [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
  >>> metrics.recall_at_k(s, [0, 0, 1, 1], ks=(1,))
  {1: 0.5}
"""

import importlib

# The old module path `tcm_jax.metrics.opis` is loaded before the function
# `opis` is bound below: loaded later, it would bind the package's `opis` to
# itself, over the function.
from tcm_jax import _moved
from tcm_jax.metrics import opis as _opis_module_path  # pylint: disable=all

from tcm_jax.metrics import advanced
from tcm_jax.metrics._accumulator import AccumulatedMetrics
from tcm_jax.metrics._accumulator import PairAccumulator
from tcm_jax.metrics._bootstrap import bootstrap_indices
from tcm_jax.metrics._bootstrap import bootstrap_interval
from tcm_jax.metrics._bootstrap import class_bootstrap
from tcm_jax.metrics._bootstrap import Interval
from tcm_jax.metrics._evaluation import evaluate_embeddings
from tcm_jax.metrics._evaluation import evaluate_similarity
from tcm_jax.metrics._evaluation import Evaluation
from tcm_jax.metrics._operating_points import operating_points
from tcm_jax.metrics._operating_points import OperatingPoints
from tcm_jax.metrics._operating_points import TarAtFar
from tcm_jax.metrics._opis import eps_opis
from tcm_jax.metrics._opis import eps_opis_from_utility
from tcm_jax.metrics._opis import opis
from tcm_jax.metrics._opis import opis_from_utility
from tcm_jax.metrics._opis import utility_curves
from tcm_jax.metrics._opis import utility_from_rates
from tcm_jax.metrics._opis import UtilityCurves
from tcm_jax.metrics._retrieval import map_at_r
from tcm_jax.metrics._retrieval import r_precision
from tcm_jax.metrics._retrieval import recall_at_k
from tcm_jax.metrics._retrieval import RetrievalMetrics
from tcm_jax.metrics._threshold import calibrate_threshold
from tcm_jax.metrics._threshold import calibration_range
from tcm_jax.metrics._threshold import CalibrationRange
from tcm_jax.metrics._threshold import CalibrationRangeError
from tcm_jax.metrics._threshold import ThresholdCalibration
from tcm_jax.metrics._transfer import calibration_transfer
from tcm_jax.metrics._transfer import CalibrationTransfer
from tcm_jax.metrics._transfer import fold_transfer
from tcm_jax.metrics._transfer import FoldTransfer

del _opis_module_path

__all__ = [
    'AccumulatedMetrics',
    'CalibrationRange',
    'CalibrationRangeError',
    'CalibrationTransfer',
    'Evaluation',
    'FoldTransfer',
    'Interval',
    'OperatingPoints',
    'PairAccumulator',
    'RetrievalMetrics',
    'TarAtFar',
    'ThresholdCalibration',
    'UtilityCurves',
    'advanced',
    'bootstrap_indices',
    'bootstrap_interval',
    'calibrate_threshold',
    'calibration_transfer',
    'calibration_range',
    'class_bootstrap',
    'eps_opis',
    'eps_opis_from_utility',
    'evaluate_embeddings',
    'evaluate_similarity',
    'fold_transfer',
    'map_at_r',
    'operating_points',
    'opis',
    'opis_from_utility',
    'r_precision',
    'recall_at_k',
    'utility_curves',
    'utility_from_rates',
]
_moved.publish(globals())  # pickles name this package, not a private module

# Old module paths, now thin modules whose names warn and name their new
# homes; `tcm_jax.metrics.<old>` still reaches them without an import.
_OLD_MODULES = ('bootstrap', 'evaluation', 'pair_counts', 'retrieval',
                'threshold')


def __getattr__(name: str):
  if name in _OLD_MODULES:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
