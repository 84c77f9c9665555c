"""Flax NNX encoders: ResNet and ViT backbones with the embedding head.

Build one from a config section with `create_encoder`, take it apart for a pure
training step with `split` / `apply`, and start from public weights with
`tcm_jax.models.pretrained`.
"""

from tcm_jax.models._layers import Frozen
from tcm_jax.models._layers import FrozenBatchNorm
from tcm_jax.models.encoder import EmbeddingHead
from tcm_jax.models.encoder import Encoder
from tcm_jax.models.encoder import GeM
from tcm_jax.models.factory import MODELS
from tcm_jax.models.factory import create_encoder
from tcm_jax.models.factory import encoder_config
from tcm_jax.models.functional import abstract
from tcm_jax.models.functional import apply
from tcm_jax.models.functional import merge
from tcm_jax.models.functional import num_weights
from tcm_jax.models.functional import split
from tcm_jax.models.resnet import ResNet
from tcm_jax.models.vit import ViT

__all__ = [
    'EmbeddingHead',
    'Encoder',
    'Frozen',
    'FrozenBatchNorm',
    'GeM',
    'MODELS',
    'ResNet',
    'ViT',
    'abstract',
    'apply',
    'create_encoder',
    'encoder_config',
    'merge',
    'num_weights',
    'split',
]
