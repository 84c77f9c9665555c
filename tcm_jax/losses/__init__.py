"""Loss functions over similarity matrices: TCM and the base losses it joins.

Each loss is a pure, jit-compatible function of a `[q, r]` similarity matrix
and labels (`loss(similarity, labels, ...)`; the proxy losses take
embeddings, labels and the class proxies), with hyperparameters as keyword
arguments and `where` padding masks. Each has a cross-device form,
`sharded_<loss>`, to call inside `jax.shard_map` on a batch sharded over a
mesh axis: its value and gradients equal those of one device holding the
global batch. `objective(name, tcm={...})` is a base loss plus TCM, chosen by
name, returning the total and its parts.

Every loss follows the same rules at the edges: an empty batch (or one with
every row padded) gives 0 with zero gradients; a pair that takes part with a
non-finite similarity, or (traced) a proxy label outside
`[0, num_proxies)`, gives NaN, so that a trainer's non-finite guard sees it;
padded rows may hold anything, NaN included, in the embeddings forms
(`tcm_loss_from_embeddings`, `Objective.from_embeddings`, the proxy losses,
the `sharded_*` forms), whose value and gradients are then those of the
unpadded batch; labels that are no integer array (None, strings) and bad
`query_offset` values raise errors that name them.

The statistics the losses are made of, their pair masks and cross-device
references are in `tcm_jax.losses.advanced`.

Importing this package pulls in only jax and numpy.

Examples:
  >>> import jax.numpy as jnp
  >>> import tcm_jax
  >>> from tcm_jax import losses
  >>> z = jnp.array([[0, 1], [0.43, 0.9], [1, 0], [0.5, 0.5]])
  >>> labels = jnp.array([0, 0, 1, 1])
  >>> s = tcm_jax.cosine_similarity(z)
  >>> total = losses.smooth_ap_loss(s, labels) + losses.tcm_loss(s, labels)
"""

from tcm_jax import _moved
from tcm_jax.losses import advanced
from tcm_jax.losses import registry
from tcm_jax.losses._pair_based import contrastive_loss
from tcm_jax.losses._pair_based import multi_similarity_loss
from tcm_jax.losses._pair_based import sharded_contrastive_loss
from tcm_jax.losses._pair_based import sharded_multi_similarity_loss
from tcm_jax.losses._pair_based import sharded_triplet_loss
from tcm_jax.losses._pair_based import triplet_loss
from tcm_jax.losses._proxy import arcface_loss
from tcm_jax.losses._proxy import cosface_loss
from tcm_jax.losses._proxy import normalized_softmax_loss
from tcm_jax.losses._proxy import proxy_anchor_loss
from tcm_jax.losses._proxy import sharded_proxy_anchor_loss
from tcm_jax.losses._ranking import recall_at_k_loss
from tcm_jax.losses._ranking import sharded_recall_at_k_loss
from tcm_jax.losses._ranking import sharded_smooth_ap_loss
from tcm_jax.losses._ranking import smooth_ap_loss
from tcm_jax.losses._tcm import sharded_tcm_loss
from tcm_jax.losses._tcm import tcm_loss
from tcm_jax.losses._tcm import tcm_loss_from_embeddings
from tcm_jax.losses._tcm_margins import margins_from_similarity
from tcm_jax.losses._tcm_margins import TCMMargins
from tcm_jax.losses.registry import objective
# Deprecated by the registry itself (it warns when called): not in __all__.
from tcm_jax.losses.registry import proxy_objective

__all__ = [
    'TCMMargins',
    'advanced',
    'arcface_loss',
    'contrastive_loss',
    'cosface_loss',
    'margins_from_similarity',
    'multi_similarity_loss',
    'normalized_softmax_loss',
    'objective',
    'proxy_anchor_loss',
    'recall_at_k_loss',
    'sharded_contrastive_loss',
    'sharded_multi_similarity_loss',
    'sharded_proxy_anchor_loss',
    'sharded_recall_at_k_loss',
    'sharded_smooth_ap_loss',
    'sharded_tcm_loss',
    'sharded_triplet_loss',
    'smooth_ap_loss',
    'tcm_loss',
    'tcm_loss_from_embeddings',
    'triplet_loss',
]
_moved.publish(globals())  # pickles name this package, not a private module

# Names this package had before `tcm_jax.losses.advanced` and
# `tcm_jax.similarity`: served for one release, with a DeprecationWarning.
__getattr__ = _moved.moved(
    __name__,
    {'tcm_jax.losses.advanced': (
        'PairMasks', 'RankingStatistics', 'References', 'TCMStatistics',
        'contrastive_statistics', 'gather_references',
        'multi_similarity_statistics', 'pair_masks', 'proxy_anchor_statistics',
        'recall_at_k_statistics', 'sharded_statistics',
        'sharded_tcm_statistics', 'smooth_ap_statistics', 'tcm_diagnostics',
        'tcm_loss_from_statistics', 'tcm_statistics', 'triplet_statistics'),
     'tcm_jax.similarity': ('cosine_similarity', 'l2_normalize')},
    submodules=('tcm',))
