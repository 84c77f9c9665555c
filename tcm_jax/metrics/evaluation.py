"""Deprecated module path: the evaluation is in `tcm_jax.metrics`, and its
`evaluate(source)` is `tcm_jax.metrics.advanced.evaluate_source`.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics': ('Evaluation', 'UtilityCurves', 'eps_opis_from_utility',
                         'evaluate_embeddings', 'evaluate_similarity',
                         'opis_from_utility'),
     'tcm_jax.metrics.advanced': ('curves_from_counts',)},
    renamed={'evaluate': 'tcm_jax.metrics.advanced.evaluate_source'})
