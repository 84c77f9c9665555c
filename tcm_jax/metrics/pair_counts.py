"""Deprecated module path: the pair sources and counts are in
`tcm_jax.metrics.advanced`; each name used from here warns and names its home.
"""

from tcm_jax import _moved

__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.metrics.advanced': (
        'Block', 'ClassCounts', 'PairSource', 'blocks', 'class_counts',
        'negative_histogram', 'source_from_embeddings',
        'source_from_similarity'),
     'tcm_jax.similarity': ('cosine_similarity',)},
    internal={'tcm_jax.metrics._pair_counts': (
        'ACCELERATOR_BLOCK_ELEMENTS', 'DEFAULT_BLOCK_ELEMENTS', 'FINE_BINS',
        'FINE_BINS_PER_UNIT', 'ProgressFn', 'block_similarity',
        'check_enough_classes', 'class_histogram_block', 'evaluated_classes',
        'negative_histogram_block', 'self_pair_mask', 'threshold_bins')})
