"""Every encoder's options, with their defaults (the paper's, at 224 pixels).

One table for `tcm_jax.models.encoder_config` and
`tcm_jax.config.model_config`: plain Python, so that a config is built
without Flax.
"""

_COMMON = {'embedding_size': 512, 'dtype': 'float32', 'in_channels': 3}
_RESNET = {'width': 1.0, 'small_images': False, 'frozen_batch_norm': False,
           'batch_norm_axis_name': None, 'gem_p': 3.0}
_VIT = {'patch_size': 16, 'image_size': 224}

RESNETS = ('resnet18', 'resnet34', 'resnet50')
VITS = ('vit_b', 'vit_s', 'vit_ti')
NAMES = RESNETS + VITS


def defaults(name: str) -> dict:
  """A fresh dict of the named encoder's options at their defaults.

  Examples:
    >>> from tcm_jax import _encoder_options
    >>> _encoder_options.defaults('vit_ti')['patch_size']
    16
    >>> _encoder_options.defaults('resnet')
    Traceback (most recent call last):
    ...
    ValueError: Unknown model 'resnet'; expected one of ['resnet18', 'resnet34', 'resnet50', 'vit_b', 'vit_s', 'vit_ti'].
  """
  if name in RESNETS:
    return {**_COMMON, **_RESNET}
  if name in VITS:
    return {**_COMMON, **_VIT}
  raise ValueError(
      f'Unknown model {name!r}; expected one of {list(NAMES)}.')
