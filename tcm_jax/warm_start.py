"""Starting a run's encoder from pretrained weights (`config.pretrained`).

Either a weight file for the backbone (a timm `.safetensors` or a big_vision
`.npz`, `tcm_jax.models.pretrained`), or an earlier tcm_jax run: its
workdir, `checkpoints/` or one step's directory, whose backbone (and head,
with `pretrained_head`) must match the new encoder name for name and shape.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from flax import nnx
import ml_collections
import numpy as np

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import models


def _paths(tree: Any, prefix: str = '') -> dict[str, tuple[int, ...]]:
  """`{'a/b/0/kernel': shape}` of nested dicts (keys compared as strings)."""
  if isinstance(tree, dict):
    found = {}
    for key, value in tree.items():
      found.update(_paths(value, f'{prefix}{key}/'))
    return found
  return {prefix[:-1]: tuple(np.shape(tree))}


def _take(ours: Any, theirs: Any) -> Any:
  """`ours`'s structure (its own key types) holding `theirs`'s arrays."""
  if isinstance(ours, dict):
    return {key: _take(value, theirs[str(key)]) for key, value in ours.items()}
  return np.asarray(theirs, dtype=np.asarray(ours).dtype)


def _load_run(config: ml_collections.ConfigDict, params, model_state) -> None:
  """Loads `config.pretrained`, an earlier run, into the new encoder's parts.

  The backbone always (and the head with `pretrained_head`), parameters and
  BatchNorm statistics; their names and shapes must match exactly.
  """
  weights = checkpoint_lib.load_run_weights(config.pretrained,
                                            head=config.pretrained_head)
  for what, ours, theirs in (('parameters', params, weights.params),
                             ('state', model_state, weights.model_state)):
    ours_pure = nnx.to_pure_dict(ours)
    for part, loaded in theirs.items():
      want, have = _paths(ours_pure.get(part, {})), _paths(loaded)
      if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:4]
        raise ValueError(
            f'pretrained: the {part} {what} of {weights.directory} do not '
            f'match this model (first differing paths and shapes: {diff}); '
            f'that run trained model {weights.config.get("model")}, this one '
            f'is {config.model.to_dict()}.')
      ours_pure[part] = _take(ours_pure[part], loaded)
    nnx.replace_by_pure_dict(ours, ours_pure)
  logging.info('Loaded the %s of %s (step %d) into the encoder.',
               ' and '.join(weights.params), weights.directory, weights.step)


def load_pretrained(config: ml_collections.ConfigDict, encoder):
  """`(graphdef, params, model_state)` of `encoder`, from `config.pretrained`.

  The encoder split for training (`models.split`), with the weights of
  `config.pretrained` loaded ('' : as it is).

  Raises:
    FileNotFoundError: `pretrained` does not exist.
    ValueError: `pretrained_head` with a weight file (which has no head), or
      a run whose encoder does not match this one.

  Examples:
    >>> from flax import nnx
    >>> from tcm_jax import config as config_lib, models, warm_start
    >>> config = config_lib.default_config()
    >>> encoder = models.create_encoder(config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8), rngs=nnx.Rngs(0))
    >>> _, params, _ = warm_start.load_pretrained(config, encoder)
    >>> sorted(params)
    ['backbone', 'head']
  """
  path = config.pretrained
  if path and not os.path.exists(path):
    raise FileNotFoundError(
        f'pretrained: {path!r} does not exist (expected a timm .safetensors '
        'or big_vision .npz file, or an earlier tcm_jax run: its workdir, '
        'checkpoints/ or one step\'s directory).')
  if path and not os.path.isdir(path):
    if config.pretrained_head:
      raise ValueError(
          'pretrained_head=True needs a tcm_jax run as pretrained (a '
          f'directory); {path!r} is a weight file, which has no embedding '
          'head.')
    from tcm_jax.models import pretrained  # pylint: disable=import-outside-toplevel
    load = (pretrained.load_big_vision_npz if path.endswith('.npz')
            else pretrained.load_timm)
    load(encoder, path)
  graphdef, params, model_state = models.split(encoder)
  if path and os.path.isdir(path):
    _load_run(config, params, model_state)
  return graphdef, params, model_state
