"""What the losses are made of: statistics, reductions, pair masks, references.

Every loss of `tcm_jax.losses` is a reduction of sums and counts: with
`X` one of `contrastive`, `triplet`, `multi_similarity`, `smooth_ap`,
`recall_at_k`, `proxy_anchor` and `tcm`,

  X_loss(...) == X_loss_from_statistics(X_statistics(...))

and its cross-device form `sharded_X_loss` applies the same reduction to the
statistics summed over the mesh (`sharded_statistics`; Proxy-Anchor and TCM
have their own `sharded_*_statistics`). Use these to score several losses on
one similarity matrix, to log a loss's parts (`tcm_diagnostics`), or to write
a cross-device loss of your own; `pair_masks` and `gather_references` are the
pieces every pair loss starts from.

Examples:
  >>> import jax.numpy as jnp
  >>> from tcm_jax import losses
  >>> from tcm_jax.losses import advanced
  >>> s = jnp.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.2], [0.6, 0.2, 1.0]])
  >>> y = jnp.array([0, 0, 1])
  >>> stats = advanced.tcm_statistics(s, y)
  >>> bool(advanced.tcm_loss_from_statistics(stats) == losses.tcm_loss(s, y))
  True
"""

from tcm_jax import _moved
from tcm_jax.losses._pair_based import contrastive_loss_from_statistics
from tcm_jax.losses._pair_based import contrastive_statistics
from tcm_jax.losses._pair_based import ContrastiveStatistics
from tcm_jax.losses._pair_based import MeanStatistics
from tcm_jax.losses._pair_based import multi_similarity_loss_from_statistics
from tcm_jax.losses._pair_based import multi_similarity_statistics
from tcm_jax.losses._pair_based import triplet_loss_from_statistics
from tcm_jax.losses._pair_based import triplet_statistics
from tcm_jax.losses._pairs import gather_references
from tcm_jax.losses._pairs import pair_masks
from tcm_jax.losses._pairs import PairMasks
from tcm_jax.losses._pairs import References
from tcm_jax.losses._pairs import sharded_statistics
from tcm_jax.losses._proxy import proxy_anchor_loss_from_statistics
from tcm_jax.losses._proxy import proxy_anchor_statistics
from tcm_jax.losses._proxy import ProxyAnchorStatistics
from tcm_jax.losses._proxy import sharded_proxy_anchor_statistics
from tcm_jax.losses._ranking import RankingStatistics
from tcm_jax.losses._ranking import recall_at_k_loss_from_statistics
from tcm_jax.losses._ranking import recall_at_k_statistics
from tcm_jax.losses._ranking import smooth_ap_loss_from_statistics
from tcm_jax.losses._ranking import smooth_ap_statistics
from tcm_jax.losses._tcm import sharded_tcm_statistics
from tcm_jax.losses._tcm import tcm_diagnostics
from tcm_jax.losses._tcm import tcm_loss_from_statistics
from tcm_jax.losses._tcm import tcm_statistics
from tcm_jax.losses._tcm import TCMStatistics

__all__ = [
    'ContrastiveStatistics',
    'MeanStatistics',
    'PairMasks',
    'ProxyAnchorStatistics',
    'RankingStatistics',
    'References',
    'TCMStatistics',
    'contrastive_loss_from_statistics',
    'contrastive_statistics',
    'gather_references',
    'multi_similarity_loss_from_statistics',
    'multi_similarity_statistics',
    'pair_masks',
    'proxy_anchor_loss_from_statistics',
    'proxy_anchor_statistics',
    'recall_at_k_loss_from_statistics',
    'recall_at_k_statistics',
    'sharded_proxy_anchor_statistics',
    'sharded_statistics',
    'sharded_tcm_statistics',
    'smooth_ap_loss_from_statistics',
    'smooth_ap_statistics',
    'tcm_diagnostics',
    'tcm_loss_from_statistics',
    'tcm_statistics',
    'triplet_loss_from_statistics',
    'triplet_statistics',
]
_moved.publish(globals())  # pickles name this package, not a private module
