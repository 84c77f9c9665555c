"""A saved config against the current one: its missing keys, the changes.

A checkpoint (and a finished run's `result.json`) holds the config it ran
with, as JSON. `with_default_keys` completes one saved before tcm_jax added a
key; `resume_changes` tells the keys a resumed run may change
(`tcm_jax.config.RESUMABLE`) from those that make it another run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from tcm_jax import _config_defaults
from tcm_jax import _encoder_options

def _as_saved(value: Any) -> Any:
  """`value` as a saved config.json holds it (tuples are lists)."""
  return json.loads(json.dumps(value))


def _with_encoder_defaults(model: Any) -> Any:
  """A saved `model` section with the options it lacks at its encoder's
  defaults.

  A run saved before an encoder gained an option built its encoder with that
  option's default. A section whose `name` is no encoder's (or that is not
  a section) is returned as it is: no options are invented for it.

  Examples:
    >>> from tcm_jax import _config_resume
    >>> model = _config_resume._with_encoder_defaults({'name': 'vit_ti',
    ...                                                'patch_size': 8})
    >>> model['patch_size'], model['image_size'], model['embedding_size']
    (8, 224, 512)
    >>> _config_resume._with_encoder_defaults({'name': 'my_encoder'})
    {'name': 'my_encoder'}
  """
  if not isinstance(model, dict) or model.get('name') not in (
      _encoder_options.NAMES):
    return model
  defaults = _as_saved(_encoder_options.defaults(model['name']))
  return {**model, **{key: value for key, value in defaults.items()
                      if key not in model}}


def with_default_keys(saved: dict) -> dict:
  """A saved config dict with the keys it lacks taken from `default_config`.

  A run saved before tcm_jax added a key ran as that key's default, so a
  resumed run (or a study reading its results back) compares like with like.
  The `model` section's keys are those of its encoder (`model.name`): the
  ones it lacks take that encoder's defaults (`tcm_jax.models.encoder_config`'s). The
  base loss's hyperparameters (`loss.hyper`) have no fixed keys and are left
  as they are.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> saved = {'seed': 1, 'eval': {'epsilon': 0.2},
    ...          'model': {'name': 'resnet18', 'width': 0.25}}
    >>> full = config_lib.with_default_keys(saved)
    >>> full['seed'], full['eval']['epsilon'], full['eval']['final_split']
    (1, 0.2, 'test')
    >>> full['model']['width'], full['model']['gem_p']
    (0.25, 3.0)
  """
  defaults = _as_saved(_config_defaults.default_config().to_dict())

  def merge(saved, defaults, prefix):
    merged = dict(saved)
    for key, default in defaults.items():
      name = f'{prefix}{key}'
      if name == 'model' and key in merged:
        merged[key] = _with_encoder_defaults(merged[key])
      elif name in _config_defaults.FREE_SECTIONS:
        continue
      elif key not in merged:
        merged[key] = copy.deepcopy(default)
      elif isinstance(merged[key], dict) and isinstance(default, dict):
        merged[key] = merge(merged[key], default, f'{name}.')
    return merged

  return merge(saved, defaults, '')


def changed_keys(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """Dotted keys whose values differ between two config dicts, sorted.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config_lib.changed_keys({'seed': 0, 'train': {'num_steps': 5}},
    ...                         {'seed': 0, 'train': {'num_steps': 9}})
    ['train.num_steps']
  """
  changed = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changed += changed_keys(a, b, f'{prefix}{key}.')
    elif a != b:
      changed.append(f'{prefix}{key}')
  return changed


def resume_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """`(changed, not_resumable)`: the keys in which `current` differs from
  `saved` (a checkpoint's config dict), and those of them outside
  `RESUMABLE`, which make it another run.

  Both are completed by `with_default_keys` first: a key saved before it
  existed, or an encoder option the current `model` section leaves out,
  compares at its default, as the runs use it.

  Examples:
    >>> import json
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> saved = json.loads(json.dumps(config.to_dict()))
    >>> config.seed, config.train.num_steps = 1, 9
    >>> current = json.loads(json.dumps(config.to_dict()))
    >>> config_lib.resume_changes(saved, current)
    (['seed', 'train.num_steps'], ['seed'])
  """
  changed = changed_keys(with_default_keys(saved), with_default_keys(current))
  return changed, [key for key in changed
                   if not key.startswith(_config_defaults.RESUMABLE)]


def _value_at(config: dict, key: str) -> Any:
  for part in key.split('.'):
    if not isinstance(config, dict) or part not in config:
      return '(absent)'
    config = config[part]
  return config


def _shown(value: Any, limit: int = 60) -> str:
  text = value if value == '(absent)' else json.dumps(value)
  return text if len(text) <= limit else text[:limit - 3] + '...'


def describe_changes(saved: dict, current: dict, keys: Sequence[str]) -> str:
  """`'key saved vs current, ...'` for the dotted `keys` of two config dicts.

  Both are completed by `with_default_keys`, as `resume_changes` does.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config_lib.describe_changes({'model': {'width': 0.25}},
    ...                             {'model': {'width': 0.5}}, ['model.width'])
    'model.width 0.25 vs 0.5'
  """
  saved, current = with_default_keys(saved), with_default_keys(current)
  return ', '.join(f'{key} {_shown(_value_at(saved, key))} vs '
                   f'{_shown(_value_at(current, key))}' for key in keys)
