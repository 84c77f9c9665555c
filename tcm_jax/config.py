"""The trainer's config: defaults, the paper's recipes, loading and checking.

The files in `configs/` start from `default_config()` (every key, with its
meaning) or `recipe_config` and import nothing else: building a config needs
only ml_collections, so a config file loads anywhere. `check_config` also asks
the loss registry and the encoders (imported when it runs). A resumed run may
differ from its saved config in the `RESUMABLE` keys only (`resume_changes`).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import json
import os
import re
import sys
import types
from collections.abc import Sequence
from typing import Any

import ml_collections

from tcm_jax import _config_ranges
from tcm_jax import _encoder_options

BACKBONES = {'resnet50': 'resnet50', 'vit_b16': 'vit_b'}
RECIPES = ('imagenet', 'small', 'glyphs')
OPTIMIZERS = ('adam', 'adamw', 'sgd')
FINAL_SPLITS = ('test', 'val')

# Keys that may change when a run resumes (the length of training, the
# evaluation, the loader, where things are): any other change is another run.
RESUMABLE = ('train.', 'eval.', 'input.num_threads', 'input.worker_count',
             'input.prefetch', 'input.eval_batch_size', 'dataset.data_dir',
             'dataset.glyphs.cache_dir', 'pretrained')

# Sections whose keys `default_config` does not fix: the base loss's
# hyperparameters and the encoder's options (checked by their registries).
FREE_SECTIONS = ('loss.hyper', 'model')

def model_config(name: str = 'resnet50', **overrides: Any
                 ) -> ml_collections.ConfigDict:
  """The `model` section: `tcm_jax.models.encoder_config`'s, without Flax.

  `name` is 'resnet18', 'resnet34', 'resnet50', 'vit_b', 'vit_s' or 'vit_ti';
  `overrides` change its options (an unknown one is an error here, a bad
  value in `check_config`).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> model = config_lib.model_config('resnet18', width=0.25)
    >>> model.width, model.embedding_size, model.frozen_batch_norm
    (0.25, 512, False)
  """
  options = _encoder_options.defaults(name)
  unknown = sorted(set(overrides) - set(options))
  if unknown:
    raise ValueError(
        f'Unknown option(s) {unknown} for {name!r}; its options are '
        f'{sorted(options)}.')
  return ml_collections.ConfigDict({'name': name, **options, **overrides})


def default_config() -> ml_collections.ConfigDict:
  """Every config key with its default: the paper's CUB-200 ResNet-50 recipe.

  Sections `dataset`, `input`, `model` (see `model_config`), `loss` (`name`
  in the loss registry, `hyper` its hyperparameters, `tcm`), `optimizer`,
  `train`, `eval`; `seed`; `pretrained`: a timm `.safetensors` or big_vision
  `.npz` backbone, or an earlier tcm_jax run (its workdir, `checkpoints/` or
  a step's directory), with `pretrained_head` to load its head too.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config.loss.name, config.loss.tcm.enabled, config.model.name
    ('smooth_ap', True, 'resnet50')
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.pretrained = ''
  config.pretrained_head = False

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'cub200'
  config.dataset.data_dir = ''          # '' : $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.dataset.train_class_list = ''  # inat2018 only: the Smooth-AP class lists
  config.dataset.test_class_list = ''
  # The side the model trains on: 'train', or for glyphs 'pretrain' (the
  # level-2 kanji, disjoint from every other side: a backbone to fine-tune).
  config.dataset.train_side = 'train'
  config.dataset.synthetic = ml_collections.ConfigDict(dict(
      num_classes=20, images_per_class=10, image_size=32, channels=3,
      jpeg=False))
  # glyphs only: characters rendered from font files (see tcm_jax.data.glyphs).
  config.dataset.glyphs = ml_collections.ConfigDict(dict(
      characters='jis_level1', fonts='cjk', image_size=32, ink_fraction=0.875,
      min_faces=2, cache_dir='', test_fraction=0.5, val_fraction=0.1,
      pretrain_characters='jis_level2'))

  config.input = ml_collections.ConfigDict()
  # 'imagenet', 'small' (tiny images: resize + shift) or 'glyphs' (affine +
  # stroke width; one channel unless model.in_channels is 3)
  config.input.recipe = 'imagenet'
  config.input.image_size = 224
  config.input.resize_size = 256    # imagenet recipe: shorter side before the crop
  config.input.classes_per_batch = 100
  config.input.samples_per_class = 4
  config.input.eval_batch_size = 256
  config.input.num_threads = 8
  config.input.worker_count = 0
  config.input.prefetch = 2

  config.model = model_config('resnet50', frozen_batch_norm=True)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'smooth_ap'
  config.loss.hyper = ml_collections.ConfigDict()  # the base loss's own
  config.loss.tcm = ml_collections.ConfigDict(dict(
      enabled=True, margin_pos=0.9, margin_neg=0.5, lambda_pos=1.0,
      lambda_neg=1.0))
  # TCM's margins from the data instead of margin_pos / margin_neg: those at
  # which these fractions of the positive / negative pairs of the validation
  # classes (the training classes' images where the dataset has no
  # validation side; never the test classes) are hard, measured with the
  # model being trained on at most `max_samples` of their images: before the
  # first step, then every `every_steps` steps (0: once).
  config.loss.tcm_from_data = ml_collections.ConfigDict(dict(
      enabled=False, hard_pos_fraction=0.2, hard_neg_fraction=0.01,
      every_steps=0, max_samples=2048))

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'          # adam (L2 in the gradient), adamw, sgd
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 4e-4    # on kernels only
  config.optimizer.momentum = 0.9         # sgd only
  config.optimizer.head_lr_multiplier = 1.0
  config.optimizer.proxy_lr_multiplier = 1.0
  config.optimizer.milestones = (10, 20, 30)  # epochs
  config.optimizer.decay_factor = 0.3
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0   # 0: no clipping

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 40.0
  config.train.num_steps = 0              # > 0 overrides num_epochs
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 0       # 0: at the end only
  config.train.checkpoint_every_steps = 500
  config.train.keep_checkpoints = 3
  config.train.best_metric = 'recall_at_1'
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict(dict(
      far_range=(1e-3, 1e-1), target_far=1e-2, epsilon=0.1,
      num_thresholds=101, ks=(1, 2, 4, 8), beta=1.0,
      # Raw-input baselines in the final report: the test images' pixels and
      # their whitened PCA fitted on the training classes (tcm_jax.baselines).
      baselines=True, baseline_pca_components=64,
      # The split of the final evaluation: 'test', or 'val' for the runs that
      # choose hyperparameters, so that the test classes are seen once.
      final_split='test',
      # Confidence intervals of the final metrics over classes (seeded
      # bootstrap, tcm_jax.metrics.class_bootstrap); 0 resamples: none.
      bootstrap_resamples=1000, bootstrap_confidence=0.95))
  return config


def recipe_config(dataset: str, backbone: str, *, batch_size: int,
                  epochs: int, milestones: Sequence[int],
                  learning_rate: float) -> ml_collections.ConfigDict:
  """The paper's recipe (protocol.md) for one dataset and backbone.

  ResNet-50: frozen BatchNorm, GeM, Adam; ViT-B/16: CLS token, AdamW; both
  LayerNorm + Linear to 512 + L2, 224 px crops, batches of `batch_size / 4`
  classes x 4 images, weight decay 4e-4, learning rate x 0.3 at each
  milestone (epochs), Smooth-AP + TCM (m+ 0.9, m- 0.5). The backbone starts
  from `config.pretrained` (ImageNet weights in the paper).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.recipe_config(
    ...     'cars196', 'vit_b16', batch_size=392, epochs=50,
    ...     milestones=(20, 30, 40), learning_rate=1e-5)
    >>> config.optimizer.name, config.input.classes_per_batch
    ('adamw', 98)
  """
  if backbone not in BACKBONES:
    raise ValueError(f'backbone must be one of {sorted(BACKBONES)}, got '
                     f'{backbone!r}.')
  if batch_size % 4:
    raise ValueError(f'batch_size must be a multiple of 4 (classes x 4 '
                     f'images), got {batch_size}.')
  config = default_config()
  config.dataset.name = dataset
  config.input.classes_per_batch = batch_size // 4
  config.input.samples_per_class = 4
  if backbone == 'resnet50':
    config.model = model_config('resnet50', frozen_batch_norm=True)
    config.optimizer.name = 'adam'
  else:
    config.model = model_config('vit_b')
    config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = learning_rate
  config.optimizer.milestones = tuple(milestones)
  config.train.num_epochs = float(epochs)
  return config


# --- Loading -------------------------------------------------------------------


def load_module(path: str, name: str | None = None, *,
                register: bool = False) -> types.ModuleType:
  """Runs the Python file `path` as a module named `name` and returns it.

  For files off the import path: config files, scripts, `colabs/build.py`.
  `register` adds the module to `sys.modules` before it runs (dataclasses
  look their module up there).

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import config as config_lib
    >>> path = os.path.join(tempfile.mkdtemp(), 'answer.py')
    >>> with open(path, 'w') as f:
    ...   _ = f.write('ANSWER = 42\\n')
    >>> config_lib.load_module(path).ANSWER
    42
  """
  if name is None:
    name = '_loaded_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ValueError(f'{path} cannot be loaded as a Python module.')
  module = importlib.util.module_from_spec(spec)
  if register:
    sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config(spec: str, *, check: bool = True
                ) -> ml_collections.ConfigDict:
  """The config of `path/to/file.py[:argument]`, as `--config` reads it.

  For notebooks and scripts: the file's `get_config()`, or
  `get_config(argument)` when the spec has a `:` after `.py` (as with
  `--config`, `file.py:` passes the empty string), is called and its config
  checked (`check_config`; not with `check=False`, as `--config` does
  before its overrides) and returned unlocked, to be changed before
  training. A file that takes other arguments than the backbones lists them
  in `ARGUMENTS`.

  Raises FileNotFoundError (no such file) or ValueError (not a `.py` file,
  no `get_config`, a wrong or missing argument, not a ConfigDict, an
  invalid config).

  Examples:
    >>> import os
    >>> from tcm_jax import config as config_lib
    >>> configs = os.path.join(os.path.dirname(config_lib.__file__), '..',
    ...                        'configs')
    >>> config = config_lib.load_config(os.path.join(configs,
    ...                                              'cub200.py:vit_b16'))
    >>> config.model.name, config.dataset.name
    ('vit_b', 'cub200')
  """
  match = re.fullmatch(r'(.+?\.py)(?::(.*))?', spec, re.S)
  if match is None:
    raise ValueError(f'a config spec is path/to/file.py[:argument], got '
                     f'{spec!r}.')
  path, argument = match.groups()
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config file {path!r} not found (from {spec!r}; relative paths start '
        f'in {os.getcwd()}).')
  name = os.path.splitext(os.path.basename(path))[0]
  module = load_module(path, f'_config_{name}')
  get_config = getattr(module, 'get_config', None)
  if get_config is None:
    raise ValueError(f'{path} defines no get_config().')
  takes = [p for p in inspect.signature(get_config).parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  needs = [p for p in takes if p.default is p.empty]
  allowed = getattr(module, 'ARGUMENTS', None)
  if argument is None and needs:
    raise ValueError(
        f'{path} needs an argument ({spec}:ARG, ARG one of '
        f'{list(allowed or BACKBONES)}).')
  if argument is not None and not takes:
    raise ValueError(f'{path} takes no argument, got {argument!r} from '
                     f'{spec!r}.')
  if argument is not None and allowed is not None and argument not in allowed:
    raise ValueError(f'{path} takes one of {list(allowed)}, got {argument!r}.')
  config = get_config() if argument is None else get_config(argument)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'{path}: get_config() must return an '
                     f'ml_collections.ConfigDict, got {type(config).__name__}.')
  if check:
    check_config(config)
  return config


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
    >>> config_lib.check_choice('optimizer.name', 'adamm', OPTIMIZERS)
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
          and name not in FREE_SECTIONS):
        walk(value, default[key], f'{name}.')

  walk(config, default_config(), '')


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


def _check_dataset(config: ml_collections.ConfigDict) -> None:
  """The dataset's name, and the side the model trains on."""
  from tcm_jax.data import datasets  # pylint: disable=import-outside-toplevel
  name, side = config.dataset.name, config.dataset.train_side
  check_choice('dataset.name', name, sorted(datasets.DATASETS))
  trainable = [s for s in datasets.DATASETS[name].sides
               if s not in ('val', 'test')]
  if side not in trainable:  # (as tcm_jax.data.inputs.create_inputs says)
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
  check_choice('input.recipe', config.input.recipe, RECIPES)
  check_choice('optimizer.name', config.optimizer.name, OPTIMIZERS)
  check_choice('eval.final_split', config.eval.final_split, FINAL_SPLITS)
  _check_dataset(config)
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


# --- Saved configs and resuming --------------------------------------------------


def with_default_keys(saved: dict) -> dict:
  """A saved config dict with the keys it lacks taken from `default_config`.

  A run saved before tcm_jax added a key ran as that key's default, so a
  resumed run (or a study reading its results back) compares like with like.
  The free sections (the encoder's, the base loss's hyperparameters) have no
  fixed keys and are left as they are.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> saved = {'seed': 1, 'eval': {'epsilon': 0.2}}
    >>> full = config_lib.with_default_keys(saved)
    >>> full['seed'], full['eval']['epsilon'], full['eval']['final_split']
    (1, 0.2, 'test')
  """
  # As a saved config.json holds them: tuples are lists.
  defaults = json.loads(json.dumps(default_config().to_dict()))

  def merge(saved, defaults, prefix):
    merged = dict(saved)
    for key, default in defaults.items():
      if f'{prefix}{key}' in FREE_SECTIONS:
        continue
      if key not in merged:
        merged[key] = copy.deepcopy(default)
      elif isinstance(merged[key], dict) and isinstance(default, dict):
        merged[key] = merge(merged[key], default, f'{prefix}{key}.')
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
  `saved` (a checkpoint's config dict, completed by `with_default_keys`), and
  those of them outside `RESUMABLE`, which make it another run.

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
  changed = changed_keys(with_default_keys(saved), current)
  return changed, [k for k in changed if not k.startswith(RESUMABLE)]


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

  `saved` is completed by `with_default_keys`, as `resume_changes` does.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config_lib.describe_changes({'model': {'width': 0.25}},
    ...                             {'model': {'width': 0.5}}, ['model.width'])
    'model.width 0.25 vs 0.5'
  """
  saved = with_default_keys(saved)
  return ', '.join(f'{key} {_shown(_value_at(saved, key))} vs '
                   f'{_shown(_value_at(current, key))}' for key in keys)
