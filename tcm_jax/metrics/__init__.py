"""Pure metric functions: threshold consistency (OPIS), retrieval, calibration,
and bootstrap confidence intervals over classes.

Importing this package pulls in only jax and numpy.
"""

from tcm_jax.metrics.bootstrap import bootstrap_indices
from tcm_jax.metrics.bootstrap import bootstrap_interval
from tcm_jax.metrics.bootstrap import class_bootstrap
from tcm_jax.metrics.bootstrap import Interval
from tcm_jax.metrics.evaluation import evaluate_embeddings
from tcm_jax.metrics.evaluation import evaluate_similarity
from tcm_jax.metrics.evaluation import Evaluation
from tcm_jax.metrics.opis import eps_opis
from tcm_jax.metrics.opis import eps_opis_from_utility
from tcm_jax.metrics.opis import opis
from tcm_jax.metrics.opis import opis_from_utility
from tcm_jax.metrics.opis import utility_curves
from tcm_jax.metrics.opis import utility_from_rates
from tcm_jax.metrics.opis import UtilityCurves
from tcm_jax.metrics.retrieval import map_at_r
from tcm_jax.metrics.retrieval import r_precision
from tcm_jax.metrics.retrieval import recall_at_k
from tcm_jax.metrics.retrieval import RetrievalMetrics
from tcm_jax.metrics.threshold import calibrate_threshold
from tcm_jax.metrics.threshold import calibration_range
from tcm_jax.metrics.threshold import CalibrationRange
from tcm_jax.metrics.threshold import ThresholdCalibration

__all__ = [
    'CalibrationRange',
    'Evaluation',
    'Interval',
    'RetrievalMetrics',
    'ThresholdCalibration',
    'UtilityCurves',
    'bootstrap_indices',
    'bootstrap_interval',
    'calibrate_threshold',
    'calibration_range',
    'class_bootstrap',
    'eps_opis',
    'eps_opis_from_utility',
    'evaluate_embeddings',
    'evaluate_similarity',
    'map_at_r',
    'opis',
    'opis_from_utility',
    'r_precision',
    'recall_at_k',
    'utility_curves',
    'utility_from_rates',
]
