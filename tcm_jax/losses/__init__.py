"""Pure loss functions over similarity matrices.

Importing this package pulls in only jax and numpy.
"""

from tcm_jax.losses._pair_based import contrastive_loss
from tcm_jax.losses._pair_based import contrastive_statistics
from tcm_jax.losses._pair_based import multi_similarity_loss
from tcm_jax.losses._pair_based import multi_similarity_statistics
from tcm_jax.losses._pair_based import sharded_contrastive_loss
from tcm_jax.losses._pair_based import sharded_multi_similarity_loss
from tcm_jax.losses._pair_based import sharded_triplet_loss
from tcm_jax.losses._pair_based import triplet_loss
from tcm_jax.losses._pair_based import triplet_statistics
from tcm_jax.losses._pairs import gather_references
from tcm_jax.losses._proxy import arcface_loss
from tcm_jax.losses._proxy import cosface_loss
from tcm_jax.losses._proxy import normalized_softmax_loss
from tcm_jax.losses._proxy import proxy_anchor_loss
from tcm_jax.losses._proxy import proxy_anchor_statistics
from tcm_jax.losses._proxy import sharded_proxy_anchor_loss
from tcm_jax.losses._pairs import pair_masks
from tcm_jax.losses._pairs import PairMasks
from tcm_jax.losses._pairs import References
from tcm_jax.losses._pairs import sharded_statistics
from tcm_jax.losses._ranking import RankingStatistics
from tcm_jax.losses._ranking import recall_at_k_loss
from tcm_jax.losses._ranking import recall_at_k_statistics
from tcm_jax.losses._ranking import sharded_recall_at_k_loss
from tcm_jax.losses._ranking import sharded_smooth_ap_loss
from tcm_jax.losses._ranking import smooth_ap_loss
from tcm_jax.losses._ranking import smooth_ap_statistics
from tcm_jax.losses import registry
from tcm_jax.losses._similarity import cosine_similarity
from tcm_jax.losses._similarity import l2_normalize
from tcm_jax.losses.registry import objective
from tcm_jax.losses.registry import proxy_objective
from tcm_jax.losses.tcm import margins_from_similarity
from tcm_jax.losses.tcm import sharded_tcm_loss
from tcm_jax.losses.tcm import sharded_tcm_statistics
from tcm_jax.losses.tcm import tcm_diagnostics
from tcm_jax.losses.tcm import tcm_loss
from tcm_jax.losses.tcm import tcm_loss_from_embeddings
from tcm_jax.losses.tcm import tcm_loss_from_statistics
from tcm_jax.losses.tcm import tcm_statistics
from tcm_jax.losses.tcm import TCMMargins
from tcm_jax.losses.tcm import TCMStatistics

__all__ = [
    'arcface_loss',
    'cosface_loss',
    'PairMasks',
    'RankingStatistics',
    'References',
    'TCMMargins',
    'TCMStatistics',
    'contrastive_loss',
    'contrastive_statistics',
    'cosine_similarity',
    'gather_references',
    'l2_normalize',
    'margins_from_similarity',
    'multi_similarity_loss',
    'multi_similarity_statistics',
    'normalized_softmax_loss',
    'objective',
    'pair_masks',
    'proxy_anchor_loss',
    'proxy_anchor_statistics',
    'proxy_objective',
    'recall_at_k_loss',
    'recall_at_k_statistics',
    'registry',
    'sharded_contrastive_loss',
    'sharded_multi_similarity_loss',
    'sharded_proxy_anchor_loss',
    'sharded_recall_at_k_loss',
    'sharded_smooth_ap_loss',
    'sharded_statistics',
    'sharded_tcm_loss',
    'sharded_tcm_statistics',
    'sharded_triplet_loss',
    'smooth_ap_loss',
    'smooth_ap_statistics',
    'tcm_diagnostics',
    'tcm_loss',
    'tcm_loss_from_embeddings',
    'tcm_loss_from_statistics',
    'tcm_statistics',
    'triplet_loss',
    'triplet_statistics',
]
