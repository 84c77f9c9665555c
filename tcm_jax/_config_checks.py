"""Checking a config before anything is built: its keys, choices and values.

`check_config` (published by `tcm_jax.config`) runs every check: the keys
against `default_config`'s, each choice, the encoder's options and the loss's
name and hyperparameters (asking their registries, imported when it runs),
each value's range (`tcm_jax._config_ranges`) and the loss's own checks of its
hyperparameter values, traced on abstract inputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import ml_collections

from tcm_jax import _config_defaults
from tcm_jax import _config_ranges

def check_override(config: ml_collections.ConfigDict, key: str) -> None:
  """Fails unless the dotted `key` is in `config`, listing that level's keys.

  A command-line override (`--config.loss.tcm.enabled=False`) sets a key of
  the config file's config; it cannot add one.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config_lib.check_override(config, 'loss.tcm.enabled')
    >>> config_lib.check_override(config, 'loss.tcm.enabeld')
    Traceback (most recent call last):
    ...
    ValueError: no config key loss.tcm.enabeld (did you mean loss.tcm.enabled?); loss.tcm has: enabled, lambda_neg, lambda_pos, margin_neg, margin_pos.
  """
  section, where = config, ''
  parts = key.split('.')
  for i, part in enumerate(parts):
    here = f'{where}.{part}' if where else part
    if not isinstance(section, ml_collections.ConfigDict):
      raise ValueError(f'no config key {key}: {where} is a value '
                       f'({section!r}), not a section.')
    if part not in section:
      keys = sorted(section)
      close = difflib.get_close_matches(part, keys, n=1)
      hint = ' (did you mean {}?)'.format('.'.join(
          ([where] if where else []) + close + parts[i + 1:])) if close else ''
      listed = ', '.join(keys) if keys else 'no keys'
      note = ''
      if where == 'loss.hyper':
        note = (' (an override cannot add a key: set the base loss\'s '
                f'hyperparameters in the config file, config.{here} = ...)')
      raise ValueError(f'no config key {key}{hint}; {where or "the config"} '
                       f'has: {listed}{note}.')
    section, where = section[part], here


def check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
  """Fails unless `value` is one of `allowed`, naming the key and the choices.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config_lib.check_choice('optimizer.name', 'adamm',
    ...                         config_lib.OPTIMIZERS)
    Traceback (most recent call last):
    ...
    ValueError: optimizer.name must be one of ['adam', 'adamw', 'sgd'], got 'adamm'.
  """
  # Imported here: _checks needs NumPy, which building a config does not.
  from tcm_jax import _checks  # pylint: disable=import-outside-toplevel
  _checks.check_choice(key, value, allowed)


def metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """The metrics an evaluation reports, by the names the logs give them.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config_lib.metric_names(config_lib.default_config())[:2]
    ['recall_at_1', 'recall_at_2']
  """
  return ([f'recall_at_{k}' for k in config.eval.ks]
          + ['map_at_r', 'r_precision', 'opis', 'eps_opis'])


def _check_keys(config: ml_collections.ConfigDict) -> None:
  def walk(section, default, prefix):
    for key in section:
      name = f'{prefix}{key}'
      if key not in default:
        where = prefix[:-1] or 'the config'
        raise ValueError(
            f'Unknown config key {name}; the keys of {where} are: '
            f'{", ".join(sorted(default))}.')
      value = section[key]
      if (isinstance(value, ml_collections.ConfigDict)
          and name not in _config_defaults.FREE_SECTIONS):
        walk(value, default[key], f'{name}.')

  walk(config, _config_defaults.default_config(), '')


def objective_arguments(config: ml_collections.ConfigDict
                        ) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
  """`(loss.name, TCM's hyperparameters or None, the base loss's)`.

  As `tcm_jax.losses.objective(name, tcm=tcm, **hyper)` takes them. The
  ranking losses' `max_positives` defaults to `samples_per_class - 1`, the
  exact number of positives of every query in a P x K batch.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config.loss.tcm.enabled = False
    >>> config_lib.objective_arguments(config)
    ('smooth_ap', None, {'max_positives': 3})
  """
  from tcm_jax.losses import registry  # pylint: disable=import-outside-toplevel
  tcm = dict(config.loss.tcm)
  enabled = tcm.pop('enabled')
  hyper = config.loss.hyper.to_dict()
  name = config.loss.name
  if (name in registry.LOSSES and 'max_positives' not in hyper
      and 'max_positives' in registry.get(name).hyperparameters()):
    # Batches hold K samples of each of P distinct classes: every query has
    # exactly K - 1 positives, and bounding the ranking losses' work by them
    # is exact (and B / K times cheaper than considering every reference).
    hyper['max_positives'] = max(1, config.input.samples_per_class - 1)
  return name, tcm if enabled else None, hyper


def check_dataset(config: ml_collections.ConfigDict) -> None:
  """Fails unless `dataset.name` is a dataset and `dataset.train_side` one of
  its sides that no evaluation sees.

  `check_config` runs it, and `tcm_jax.data.inputs.create_inputs` for a
  config that skipped that check.

  Examples:
    >>> from tcm_jax import _config_checks
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config.dataset.name, config.dataset.train_side = 'digits', 'test'
    >>> _config_checks.check_dataset(config)
    Traceback (most recent call last):
    ...
    ValueError: dataset.train_side must be one of ['train'] for digits (never the classes it is evaluated on), got 'test'.
  """
  from tcm_jax.data import datasets  # pylint: disable=import-outside-toplevel
  name, side = config.dataset.name, config.dataset.train_side
  check_choice('dataset.name', name, sorted(datasets.DATASETS))
  trainable = [s for s in datasets.DATASETS[name].sides
               if s not in ('val', 'test')]
  if side not in trainable:
    raise ValueError(
        f'dataset.train_side must be one of {trainable} for {name} (never '
        f'the classes it is evaluated on), got {side!r}.')


def _check_sections(config: ml_collections.ConfigDict) -> None:
  """The encoder's options and the loss's name and hyperparameters."""
  # pylint: disable=import-outside-toplevel
  from tcm_jax import models
  from tcm_jax.losses import registry
  # pylint: enable=import-outside-toplevel
  model = config.model.to_dict()
  models.encoder_config(model.pop('name'), **model)
  check_choice('loss.name', config.loss.name, registry.names())
  tcm = dict(config.loss.tcm)
  enabled = tcm.pop('enabled')
  registry.objective(config.loss.name, tcm=tcm if enabled else None,
                     **config.loss.hyper.to_dict())


def _check_objective(config: ml_collections.ConfigDict) -> None:
  """The loss's hyperparameter values, as the loss itself checks them.

  The objective is traced on abstract inputs of a batch's shapes
  (`jax.eval_shape`: nothing is computed or compiled), so that a value the
  loss refuses fails here and not at the first step's compilation.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from tcm_jax.losses import registry
  # pylint: enable=import-outside-toplevel
  name, tcm, hyper = objective_arguments(config)
  objective = registry.objective(name, tcm=tcm, **hyper)
  n = config.input.classes_per_batch * config.input.samples_per_class
  labels = jax.ShapeDtypeStruct((n,), jnp.int32)
  try:
    if objective.uses_proxies:
      dim = config.model.get('embedding_size', 8)
      jax.eval_shape(
          objective, jax.ShapeDtypeStruct((n, dim), jnp.float32), labels,
          {'proxies': jax.ShapeDtypeStruct(
              (config.input.classes_per_batch, dim), jnp.float32)})
    else:
      jax.eval_shape(objective, jax.ShapeDtypeStruct((n, n), jnp.float32),
                     labels)
  except (ValueError, TypeError) as error:
    # (TCM's values are checked before, as config keys of their own.)
    raise ValueError(f'loss.hyper of loss.name {name!r} ({hyper}): '
                     f'{error}') from None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on a key `default_config` does not have, listing the valid ones.

  Also on a bad choice (dataset, loss, optimizer, ...), encoder option, loss
  hyperparameter name or value (the loss's own checks, traced on abstract
  inputs), or a value out of its range (`tcm_jax._config_ranges`: every
  number, flag, string and tuple, and the rules between keys). Runs before
  anything is built or compiled, so that a mistake in a config file or an
  override costs nothing.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config.optimizer.learnig_rate = 0.1
    >>> config_lib.check_config(config)
    Traceback (most recent call last):
    ...
    ValueError: Unknown config key optimizer.learnig_rate; the keys of optimizer are: decay_factor, grad_clip_norm, head_lr_multiplier, learning_rate, milestones, momentum, name, proxy_lr_multiplier, warmup_steps, weight_decay.
  """
  _check_keys(config)
  check_choice('input.recipe', config.input.recipe, _config_defaults.RECIPES)
  check_choice('optimizer.name', config.optimizer.name,
               _config_defaults.OPTIMIZERS)
  check_choice('eval.final_split', config.eval.final_split,
               _config_defaults.FINAL_SPLITS)
  check_dataset(config)
  _check_sections(config)
  for key, test, expected in _config_ranges.RANGES:
    value = config
    for part in key.split('.'):
      value = value[part]
    if not test(value, config):
      raise ValueError(f'{key} must be {expected}, got {value!r}.')
  check_choice('train.best_metric', config.train.best_metric,
               metric_names(config))  # after eval.ks
  _check_objective(config)
