"""Deprecated module path: the bootstrap is in `tcm_jax.metrics`; each name
used from here warns and names its home.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics': ('Interval', 'bootstrap_indices',
                         'bootstrap_interval', 'class_bootstrap')})
