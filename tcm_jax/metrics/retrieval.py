"""Deprecated module path: the retrieval metrics are in `tcm_jax.metrics`;
each name used from here warns and names its home.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics': ('RetrievalMetrics', 'map_at_r', 'r_precision',
                         'recall_at_k')},
    internal={'tcm_jax.metrics._retrieval': (
        'RetrievalPlan', 'plan', 'retrieval_block', 'retrieval_metrics',
        'summarize')})
