"""The streamed evaluation engine the metrics are built on.

Every metric of `tcm_jax.metrics` is one or two passes over blocks of query
rows of a pair source: a similarity matrix, or embeddings whose similarities
are computed block by block on device, so that the `[N, N]` matrix is never
held. Build the source once (`source_from_embeddings`,
`source_from_similarity`) to evaluate it (`evaluate_source`) and count it
again, e.g. over wider thresholds for a figure (`class_counts`,
`curves_from_counts`), or to run a kernel of your own over its `blocks`.
`evaluate_source(..., engine='histogram')` is the one-pass engine, whose
state is a `PairHistograms` per set of query rows.

Examples:
  >>> import numpy as np
  >>> from tcm_jax import metrics
  >>> from tcm_jax.metrics import advanced
  >>> z = np.eye(4) + 0.1
  >>> source = advanced.source_from_embeddings(z, [0, 0, 1, 1])
  >>> result = advanced.evaluate_source(source, distance_range=(0.1, 0.9))
  >>> wide = advanced.class_counts(
  ...     source, advanced.thresholds_between(0.0, 2.0, 5), 1.0)
  >>> curves = advanced.curves_from_counts(
  ...     wide, np.array([True, True]), source.classes, 1.0,
  ...     result.curves.calibration_range)
  >>> curves.utility.shape  # two classes, five thresholds
  (2, 5)
"""

from tcm_jax import _moved
from tcm_jax.metrics._evaluation import check_options
from tcm_jax.metrics._evaluation import evaluate_source
from tcm_jax.metrics._histograms import PairHistograms
from tcm_jax.metrics._operating_points import (
    operating_points_from_histograms)
from tcm_jax.metrics._operating_points import fits as histograms_fit
from tcm_jax.metrics._operating_points import pair_histograms
from tcm_jax.metrics._opis import curves_from_counts
from tcm_jax.metrics._point_intervals import operating_point_intervals
from tcm_jax.metrics._pair_counts import Block
from tcm_jax.metrics._pair_counts import blocks
from tcm_jax.metrics._pair_counts import class_counts
from tcm_jax.metrics._pair_counts import ClassCounts
from tcm_jax.metrics._pair_counts import negative_histogram
from tcm_jax.metrics._pair_counts import PairSource
from tcm_jax.metrics._pair_counts import source_from_embeddings
from tcm_jax.metrics._pair_counts import source_from_similarity
from tcm_jax.metrics._threshold import thresholds_between
from tcm_jax.metrics._transfer import transfer_from_histograms

__all__ = [
    'Block',
    'ClassCounts',
    'PairHistograms',
    'PairSource',
    'blocks',
    'check_options',
    'class_counts',
    'curves_from_counts',
    'evaluate_source',
    'histograms_fit',
    'negative_histogram',
    'operating_point_intervals',
    'operating_points_from_histograms',
    'pair_histograms',
    'source_from_embeddings',
    'source_from_similarity',
    'thresholds_between',
    'transfer_from_histograms',
]
_moved.publish(globals())  # pickles name this package, not a private module
