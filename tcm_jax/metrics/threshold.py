"""Deprecated module path: the calibration is in `tcm_jax.metrics`, the
thresholds in `tcm_jax.metrics.advanced`; each name used here warns.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics': ('CalibrationRange', 'ThresholdCalibration',
                         'calibrate_threshold', 'calibration_range'),
     'tcm_jax.metrics.advanced': ('thresholds_between',)},
    internal={'tcm_jax.metrics._threshold': ('calibrate', 'far_quantile',
                                             'resolve_range'),
              'tcm_jax._checks': ('check_far', 'check_range')})
