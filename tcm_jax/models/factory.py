"""Encoders by name, from a config section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx
import ml_collections

from tcm_jax import _checks
from tcm_jax import _encoder_options
from tcm_jax.models._layers import as_dtype
from tcm_jax.models.encoder import EmbeddingHead
from tcm_jax.models.encoder import Encoder
from tcm_jax.models.resnet import RESNETS
from tcm_jax.models.resnet import ResNet
from tcm_jax.models.vit import VITS
from tcm_jax.models.vit import ViT

MODELS = tuple(sorted(RESNETS)) + tuple(sorted(VITS))

_POSITIVE_INTS = ('embedding_size', 'in_channels', 'patch_size', 'image_size')
_BOOLS = ('small_images', 'frozen_batch_norm')


def _check(name: str, options: Mapping[str, Any]) -> None:
  """Types and ranges of the options, before they reach a layer's constructor."""
  option = lambda key: f'{name} option {key}'
  for key in _POSITIVE_INTS:
    if key in options:
      _checks.check_int(option(key), options[key], 1,
                        expected='a positive int')
  for key in _BOOLS:
    if key in options:
      _checks.check_type(option(key), options[key], bool, 'True or False')
  if 'width' in options:
    _checks.check_number(option('width'), options['width'], above=0)
  if 'gem_p' in options:
    _checks.check_number(option('gem_p'), options['gem_p'], at_least=1)
  if 'batch_norm_axis_name' in options:
    _checks.check_type(option('batch_norm_axis_name'),
                       options['batch_norm_axis_name'], (str, type(None)),
                       'a mesh axis name (str) or None')


def encoder_config(name: str = 'resnet50', **overrides: Any
                   ) -> ml_collections.ConfigDict:
  """The config section of an encoder, with every option at its default.

  Args:
    name: one of `MODELS`: 'resnet18', 'resnet34', 'resnet50', 'vit_b',
      'vit_s', 'vit_ti'.
    **overrides: options to change (the keys of the returned section).

  Returns:
    A `ConfigDict` with `name`, `embedding_size`, `dtype` ('float32' or
    'bfloat16' compute; parameters are float32 either way), `in_channels`, and
    for ResNets `width`, `small_images`, `frozen_batch_norm`,
    `batch_norm_axis_name` and `gem_p`; for ViTs `patch_size` and `image_size`.

  Examples:
    >>> from tcm_jax.models import encoder_config
    >>> config = encoder_config('vit_s', patch_size=4, image_size=32)
    >>> config.patch_size, config.embedding_size
    (4, 512)
  """
  options = _encoder_options.defaults(name)  # (shared with tcm_jax.config)
  unknown = sorted(set(overrides) - set(options))
  if unknown:
    raise ValueError(
        f'Unknown option(s) {unknown} for {name!r}; its options are '
        f'{sorted(options)}.')
  options.update(overrides)
  _check(name, options)
  return ml_collections.ConfigDict({'name': name, **options})


def create_encoder(config: Mapping[str, Any], *, rngs: nnx.Rngs) -> Encoder:
  """Builds the encoder a config section describes (see `encoder_config`).

  Options left out take their defaults; options the named model does not have
  are an error, so a misspelt key cannot be silently ignored.

  Args:
    config: a `ConfigDict` or mapping with at least `name`.
    rngs: `nnx.Rngs` for the initial weights.

  Returns:
    An `Encoder`: `encoder(images, train=...)` gives L2-normalised float32
    embeddings `[batch, embedding_size]`.

  Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from tcm_jax.models import create_encoder
    >>> encoder = create_encoder(
    ...     {'name': 'resnet18', 'width': 0.25, 'small_images': True,
    ...      'embedding_size': 16}, rngs=nnx.Rngs(0))
    >>> encoder(jnp.zeros((2, 32, 32, 3))).shape
    (2, 16)
  """
  config = dict(config.to_dict() if hasattr(config, 'to_dict') else config)
  if 'name' not in config:
    raise ValueError(
        f"The encoder config needs a 'name', one of {list(MODELS)}; got keys "
        f'{sorted(config)}.')
  name = config.pop('name')
  options = encoder_config(name, **config)
  dtype = as_dtype(options.dtype, name='dtype')
  if name in RESNETS:
    backbone = ResNet(
        name, width=options.width, small_images=options.small_images,
        frozen_batch_norm=options.frozen_batch_norm,
        batch_norm_axis_name=options.batch_norm_axis_name,
        in_channels=options.in_channels, dtype=dtype, rngs=rngs)
    head = EmbeddingHead(backbone.num_features, options.embedding_size,
                         pool='gem', gem_p=options.gem_p, dtype=dtype,
                         rngs=rngs)
  else:
    backbone = ViT(name, patch_size=options.patch_size,
                   image_size=options.image_size,
                   in_channels=options.in_channels, dtype=dtype, rngs=rngs)
    head = EmbeddingHead(backbone.num_features, options.embedding_size,
                         pool='cls', dtype=dtype, rngs=rngs)
  return Encoder(backbone, head)
