"""Deprecated module path: OPIS is in `tcm_jax.metrics` (whose `opis` is the
function), the counts-to-curves step in `tcm_jax.metrics.advanced`.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics': ('UtilityCurves', 'eps_opis', 'eps_opis_from_utility',
                         'opis', 'opis_from_utility', 'utility_curves',
                         'utility_from_rates'),
     'tcm_jax.metrics.advanced': ('curves_from_counts',)})
