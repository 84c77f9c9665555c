"""tcm_jax: threshold-consistent deep metric learning in JAX.

The most used functions are re-exported here; `tcm_jax.losses` holds the rest.
Importing `tcm_jax` (or `tcm_jax.losses`) pulls in only jax and numpy: the
trainer's dependencies load with the modules that need them.
"""

from tcm_jax import losses
from tcm_jax.losses import cosine_similarity
from tcm_jax.losses import margins_from_similarity
from tcm_jax.losses import TCMMargins
from tcm_jax.losses import tcm_loss
from tcm_jax.losses import tcm_loss_from_embeddings

__version__ = '0.1.0'

__all__ = [
    'TCMMargins',
    'cosine_similarity',
    'losses',
    'margins_from_similarity',
    'tcm_loss',
    'tcm_loss_from_embeddings',
]
