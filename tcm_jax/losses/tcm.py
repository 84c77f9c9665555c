"""Deprecated module path: TCM is in `tcm_jax.losses`, its statistics in
`tcm_jax.losses.advanced`; each name used from here warns and names its home.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.losses': ('TCMMargins', 'margins_from_similarity',
                        'sharded_tcm_loss', 'tcm_loss',
                        'tcm_loss_from_embeddings'),
     'tcm_jax.losses.advanced': ('TCMStatistics', 'sharded_tcm_statistics',
                                 'tcm_diagnostics', 'tcm_loss_from_statistics',
                                 'tcm_statistics')})
