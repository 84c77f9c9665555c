"""Training: `train_and_evaluate(config, workdir)` and the pieces it is made of.

The run reads top to bottom in `train_and_evaluate`: inputs, model, objective
and optimizer, the data-parallel step, resume, the loop (log, evaluate,
checkpoint), the final report. Each piece is a function a notebook can call on
its own: `create_inputs`, `create_model`, `create_objective`,
`create_optimizer`, `make_train_step`, `embed_split`.

The config's sections and their defaults are `default_config()`; configs in
`configs/` start from it and change what their experiment needs.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from absl import logging
from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import losses
from tcm_jax import metrics as metrics_lib
from tcm_jax import models
from tcm_jax import parallel
from tcm_jax.data import datasets
from tcm_jax.data import pipeline
from tcm_jax.data import sampler as sampler_lib
from tcm_jax.data import transforms
from tcm_jax.losses import registry

# --- Config ----------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
  """Every config key with its default: the paper's CUB-200 ResNet-50 recipe.

  Sections: `dataset`, `input`, `model` (an `encoder_config` section),
  `loss` (`name` from the loss registry, `hyper` its hyperparameters, `tcm`),
  `optimizer`, `train`, `eval`; and `seed`, `pretrained` (a timm
  `.safetensors` or big_vision `.npz` file for the backbone, or an earlier
  tcm_jax run: its workdir, `checkpoints/` or one step's directory; '' for
  none) and `pretrained_head` (from a tcm_jax run, load the embedding head
  too, not only the backbone).

  Examples:
    >>> from tcm_jax import train
    >>> config = train.default_config()
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

  config.model = models.encoder_config('resnet50', frozen_batch_norm=True)

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


BACKBONES = {'resnet50': 'resnet50', 'vit_b16': 'vit_b'}


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
    >>> from tcm_jax import train
    >>> config = train.recipe_config('cars196', 'vit_b16', batch_size=392,
    ...                              epochs=50, milestones=(20, 30, 40),
    ...                              learning_rate=1e-5)
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
    config.model = models.encoder_config('resnet50', frozen_batch_norm=True)
    config.optimizer.name = 'adam'
  else:
    config.model = models.encoder_config('vit_b')
    config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = learning_rate
  config.optimizer.milestones = tuple(milestones)
  config.train.num_epochs = float(epochs)
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `path/to/file.py[:argument]`, as `--config` reads it.

  For notebooks and scripts: the file's `get_config()`, or
  `get_config(argument)` when the spec has a `:` after `.py` (as with
  `--config`, `file.py:` passes the empty string), is called and its config
  checked and returned unlocked, to be changed before training. A file that
  takes other arguments than the backbones lists them in `ARGUMENTS`.

  Args:
    spec: a config file, optionally followed by `:` and its argument.

  Returns:
    The config.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a `.py` file, no `get_config`, an argument the file does
      not take (or none where it needs one), or an invalid config.

  Examples:
    >>> import os
    >>> from tcm_jax import train
    >>> configs = os.path.join(os.path.dirname(train.__file__), '..', 'configs')
    >>> config = train.load_config(os.path.join(configs, 'cub200.py:vit_b16'))
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
  module_spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
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
  check_config(config)
  return config


_RECIPES = ('imagenet', 'small', 'glyphs')
_OPTIMIZERS = ('adam', 'adamw', 'sgd')

def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f'{key} must be one of {list(allowed)}, got {value!r}.')


# Keys that may change when a run resumes (the length of training, the
# evaluation, the loader, where things are): any other change is another run.
_RESUMABLE = ('train.', 'eval.', 'input.num_threads', 'input.worker_count',
              'input.prefetch', 'input.eval_batch_size', 'dataset.data_dir',
              'dataset.glyphs.cache_dir', 'pretrained')

# Sections whose keys are not fixed by `default_config`: the base loss's
# hyperparameters (checked by the loss registry) and the encoder's options
# (checked by `models.encoder_config` for the named model).
_FREE_SECTIONS = ('loss.hyper', 'model')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on a key `default_config` does not have, listing the valid ones.

  Runs before anything is built or compiled, so that a misspelt key in a
  config file or an override costs nothing.

  Examples:
    >>> from tcm_jax import train
    >>> config = train.default_config()
    >>> config.optimizer.learnig_rate = 0.1
    >>> train.check_config(config)
    Traceback (most recent call last):
    ...
    ValueError: Unknown config key optimizer.learnig_rate; the keys of optimizer are: decay_factor, grad_clip_norm, head_lr_multiplier, learning_rate, milestones, momentum, name, proxy_lr_multiplier, warmup_steps, weight_decay.
  """
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
          and name not in _FREE_SECTIONS):
        walk(value, default[key], f'{name}.')

  walk(config, default_config(), '')
  model = config.model.to_dict()
  models.encoder_config(model.pop('name'), **model)
  if config.train.best_metric not in _metric_names(config):
    raise ValueError(
        f'train.best_metric must be one of {_metric_names(config)}, got '
        f'{config.train.best_metric!r}.')
  _check_choice('input.recipe', config.input.recipe, _RECIPES)
  _check_choice('optimizer.name', config.optimizer.name, _OPTIMIZERS)
  _check_choice('eval.final_split', config.eval.final_split, ('test', 'val'))
  create_objective(config)  # the loss's name and hyperparameters
  o, t, m = config.optimizer, config.train, config.loss.tcm_from_data
  for key, value, ok, expected in (
      ('optimizer.learning_rate', o.learning_rate, o.learning_rate > 0, '> 0'),
      ('optimizer.decay_factor', o.decay_factor, 0 < o.decay_factor <= 1,
       'in (0, 1]'),
      ('optimizer.warmup_steps', o.warmup_steps, o.warmup_steps >= 0, '>= 0'),
      ('optimizer.weight_decay', o.weight_decay, o.weight_decay >= 0, '>= 0'),
      ('train.keep_checkpoints', t.keep_checkpoints, t.keep_checkpoints >= 1,
       '>= 1'),
      ('eval.baseline_pca_components', config.eval.baseline_pca_components,
       isinstance(config.eval.baseline_pca_components, int)
       and config.eval.baseline_pca_components >= 1, 'an int >= 1'),
      ('train.num_epochs', t.num_epochs, t.num_epochs > 0 or t.num_steps > 0,
       '> 0 (or train.num_steps > 0)'),
      ('loss.tcm_from_data.hard_pos_fraction', m.hard_pos_fraction,
       0 < m.hard_pos_fraction < 1, 'in (0, 1)'),
      ('loss.tcm_from_data.hard_neg_fraction', m.hard_neg_fraction,
       0 < m.hard_neg_fraction < 1, 'in (0, 1)'),
      ('loss.tcm_from_data.every_steps', m.every_steps,
       isinstance(m.every_steps, int) and m.every_steps >= 0, 'an int >= 0'),
      ('loss.tcm_from_data.max_samples', m.max_samples,
       isinstance(m.max_samples, int) and m.max_samples >= 4, 'an int >= 4'),
      ('loss.tcm_from_data.enabled', m.enabled,
       not m.enabled or config.loss.tcm.enabled,
       'False when loss.tcm.enabled is False (no TCM, no margins)'),
      ('pretrained_head', config.pretrained_head,
       not config.pretrained_head or bool(config.pretrained),
       'False without pretrained (there is no head to load)'),
      ('eval.bootstrap_resamples', config.eval.bootstrap_resamples,
       isinstance(config.eval.bootstrap_resamples, int)
       and config.eval.bootstrap_resamples >= 0, 'an int >= 0'),
      ('eval.bootstrap_confidence', config.eval.bootstrap_confidence,
       0 < config.eval.bootstrap_confidence < 1, 'in (0, 1)'),
  ):
    if not ok:
      raise ValueError(f'{key} must be {expected}, got {value!r}.')


def _metric_names(config) -> list[str]:  # pylint: disable=invalid-name
  return ([f'recall_at_{k}' for k in config.eval.ks]
          + ['map_at_r', 'r_precision', 'opis', 'eps_opis'])


# --- Inputs ----------------------------------------------------------------------


class Inputs(NamedTuple):
  """The data of a run.

  Attributes:
    train, test: the open-world splits (disjoint classes).
    val: classes held out of training for model selection (periodic
      evaluation, the best checkpoint), or None if the dataset has none;
      the test classes are then what periodic evaluation sees.
    classes: the sorted training class ids; batch labels are indices into it.
    sampler: the class-balanced sampler over `train`.
    train_transform, eval_transform: the recipe's image transforms.
    steps_per_epoch: training images / global batch (at least 1).
  """
  train: datasets.Split
  test: datasets.Split
  val: datasets.Split | None
  classes: np.ndarray
  sampler: sampler_lib.ClassBalancedSampler
  train_transform: Callable[..., np.ndarray]
  eval_transform: Callable[[np.ndarray], np.ndarray]
  steps_per_epoch: int

  @property
  def selection(self) -> datasets.Split:
    """The split that periodic evaluation and model selection see."""
    return self.test if self.val is None else self.val

  def final_split(self, name: str) -> datasets.Split:
    """The split of the final evaluation: 'test' or 'val'."""
    _check_choice('eval.final_split', name, ('test', 'val'))
    if name == 'test':
      return self.test
    if self.val is None:
      raise ValueError(
          f"eval.final_split is 'val', but {self.train.name.split('/')[0]} "
          'has no validation side.')
    return self.val


def _transforms(i: ml_collections.ConfigDict, channels: int):
  _check_choice('input.recipe', i.recipe, _RECIPES)
  if i.recipe == 'imagenet':
    return (transforms.TrainTransform(size=i.image_size),
            transforms.EvalTransform(size=i.image_size, resize=i.resize_size))
  if i.recipe == 'small':
    return (transforms.SmallTrainTransform(size=i.image_size),
            transforms.SmallEvalTransform(size=i.image_size))
  from tcm_jax.data import glyph_transforms  # pylint: disable=import-outside-toplevel
  stats = dict(mean=(0.5,) * channels, std=(0.5,) * channels,
               channels=channels)
  return (glyph_transforms.GlyphTrainTransform(size=i.image_size, **stats),
          glyph_transforms.GlyphEvalTransform(size=i.image_size, **stats))


def create_inputs(config: ml_collections.ConfigDict, *, num_devices: int = 1,
                  num_processes: int = 1, process_index: int = 0) -> Inputs:
  """Splits, sampler and transforms of a config (see `Inputs`).

  Examples:
    >>> from tcm_jax import train
    >>> config = train.default_config()
    >>> config.dataset.name, config.input.recipe = 'digits', 'small'
    >>> config.input.classes_per_batch = 5
    >>> inputs = train.create_inputs(config)
    >>> len(inputs.train), inputs.classes.tolist(), inputs.sampler.batch_size
    (901, [0, 1, 2, 3, 4], 20)
    >>> inputs.val is None, inputs.selection.name
    (True, 'digits/test')
  """
  d = config.dataset
  class_lists = ((d.train_class_list, d.test_class_list)
                 if d.train_class_list or d.test_class_list else None)
  sides = datasets.DATASETS[d.name].sides if d.name in datasets.DATASETS else ()
  trainable = [side for side in sides or ('train',)
               if side not in ('val', 'test')]
  if d.train_side not in trainable:
    raise ValueError(
        f'dataset.train_side must be one of {trainable} for {d.name} (never '
        f'the classes it is evaluated on), got {d.train_side!r}.')
  names = {'train': d.train_side, 'test': 'test', 'val': 'val'}
  split = {side: datasets.load_split(
      d.name, names[side], data_dir=d.data_dir or None,
      class_lists=class_lists, seed=config.seed,
      synthetic=d.synthetic.to_dict(), glyphs=d.glyphs.to_dict())
           for side in ('train', 'test') + (('val',) if 'val' in sides else ())}
  i = config.input
  train_transform, eval_transform = _transforms(
      i, config.model.get('in_channels', 3))
  sampler = sampler_lib.ClassBalancedSampler(
      split['train'].labels, classes_per_batch=i.classes_per_batch,
      samples_per_class=i.samples_per_class, seed=config.seed,
      num_processes=num_processes, process_index=process_index,
      num_devices=num_devices)
  return Inputs(
      split['train'], split['test'], split.get('val'),
      np.unique(split['train'].labels), sampler, train_transform,
      eval_transform,
      max(1, round(len(split['train']) / sampler.batch_size)))


def loader_options(config: ml_collections.ConfigDict) -> pipeline.LoaderOptions:
  """The input section's threads, worker processes and prefetch.

  Examples:
    >>> from tcm_jax import train
    >>> train.loader_options(train.default_config()).num_threads
    8
  """
  return pipeline.LoaderOptions(num_threads=config.input.num_threads,
                                worker_count=config.input.worker_count,
                                prefetch=config.input.prefetch)


# --- Model, objective, optimizer ---------------------------------------------------


def create_objective(config: ml_collections.ConfigDict):
  """The base loss plus TCM (unless `loss.tcm.enabled` is False).

  Returns `(objective, uses_proxies)`: a pair loss (`registry.objective`)
  or a proxy loss (`registry.proxy_objective`, which needs class proxies).
  The ranking losses' `max_positives` defaults to `samples_per_class - 1`,
  the exact number of positives of every query in a P x K batch.

  Examples:
    >>> from tcm_jax import train
    >>> config = train.default_config()
    >>> config.loss.name = 'arcface'
    >>> config.loss.hyper.scale = 16.0
    >>> objective, uses_proxies = train.create_objective(config)
    >>> objective.name, uses_proxies, dict(objective.frozen_base_hyper)
    ('arcface', True, {'scale': 16.0})
  """
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
  if name in registry.PROXY_LOSSES:
    return registry.proxy_objective(name, tcm=tcm if enabled else None,
                                    **hyper), True
  if name not in registry.LOSSES or name == 'tcm':
    raise ValueError(
        f'loss.name must be one of '
        f'{sorted(set(registry.LOSSES) - {"tcm"} | set(registry.PROXY_LOSSES))}'
        f', got {name!r}.')
  return registry.objective(name, tcm=tcm if enabled else None, **hyper), False


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 uses_proxies: bool):
  """`(graphdef, params, model_state)`, params `{'encoder'[, 'proxies']}`.

  ResNets with trained BatchNorm synchronise its statistics over the mesh
  axis `parallel.AXIS` unless the config names another axis (every device
  normalises with the global batch's), so that one step on many devices
  equals one step on one; such a model runs inside `parallel.data_parallel`.

  Examples:
    >>> from tcm_jax import models, train
    >>> config = train.default_config()
    >>> config.model = models.encoder_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=16)
    >>> graphdef, params, state = train.create_model(config, 3, True)
    >>> sorted(params), params['proxies'].shape
    (['encoder', 'proxies'], (3, 16))
  """
  options = config.model.to_dict()
  if (options['name'] in models.resnet.RESNETS
      and not options.get('frozen_batch_norm')
      and options.get('batch_norm_axis_name') is None):
    options['batch_norm_axis_name'] = parallel.AXIS
  rngs = nnx.Rngs(config.seed)
  encoder = models.create_encoder(options, rngs=rngs)
  if config.pretrained and not os.path.exists(config.pretrained):
    raise FileNotFoundError(
        f'pretrained: {config.pretrained!r} does not exist (expected a timm '
        '.safetensors or big_vision .npz file, or an earlier tcm_jax run: its '
        'workdir, checkpoints/ or one step\'s directory).')
  if config.pretrained and not os.path.isdir(config.pretrained):
    if config.pretrained_head:
      raise ValueError(
          'pretrained_head=True needs a tcm_jax run as pretrained (a '
          f'directory); {config.pretrained!r} is a weight file, which has no '
          'embedding head.')
    from tcm_jax.models import pretrained  # pylint: disable=import-outside-toplevel
    load = (pretrained.load_big_vision_npz if config.pretrained.endswith('.npz')
            else pretrained.load_timm)
    load(encoder, config.pretrained)
  graphdef, params, model_state = models.split(encoder)
  if config.pretrained and os.path.isdir(config.pretrained):
    _load_run(config, params, model_state)
  params = {'encoder': params}
  if uses_proxies:
    params['proxies'] = jax.random.normal(
        rngs.params(), (num_classes, options['embedding_size']), jnp.float32)
  return graphdef, params, model_state


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


def _leaf_name(path) -> str:
  """The parameter's own name ('kernel', 'bias', 'p', ...) from its tree path."""
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  return str(names[-1])


def parameter_groups(params) -> Any:
  """Per-leaf group: 'proxies', 'head' (embedding head) or 'backbone'.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import train
    >>> params = {'encoder': {'backbone': {'conv': {'kernel': np.ones(2)}},
    ...                       'head': {'proj': {'bias': np.ones(2)}}},
    ...           'proxies': np.ones((3, 2))}
    >>> train.parameter_groups(params)
    {'encoder': {'backbone': {'conv': {'kernel': 'backbone'}}, 'head': {'proj': {'bias': 'head'}}}, 'proxies': 'proxies'}
  """
  def group(path, _):
    top = path[0].key
    if top == 'proxies':
      return 'proxies'
    return 'head' if path[1].key == 'head' else 'backbone'
  return jax.tree_util.tree_map_with_path(group, params)


def weight_decay_mask(params) -> Any:
  """True for kernels (convolutions, linear layers): the leaves decayed.

  Biases, norm scales, GeM's p (decay would pull it to its clamp), the
  ViT's position embedding and class token, and the proxies are not.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import train
    >>> params = {'encoder': {'proj': {'kernel': np.ones((2, 2)),
    ...                                'bias': np.ones(2)},
    ...                       'gem': {'p': np.ones(())}},
    ...           'proxies': np.ones((3, 2))}
    >>> train.weight_decay_mask(params)
    {'encoder': {'gem': {'p': False}, 'proj': {'bias': False, 'kernel': True}}, 'proxies': False}
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key != 'proxies' and _leaf_name(path) == 'kernel',
      params)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """The paper's step schedule, with an optional linear warm-up.

  `learning_rate * decay_factor ** (milestones passed)`, milestones in
  epochs; during the first `warmup_steps` it ramps up linearly from
  `learning_rate / warmup_steps`.

  Examples:
    >>> from tcm_jax import train
    >>> config = train.default_config()
    >>> config.optimizer.milestones = (1, 2)
    >>> schedule = train.learning_rate_schedule(config, steps_per_epoch=10)
    >>> [round(float(schedule(s)), 8) for s in (0, 9, 10, 25)]
    [0.0001, 0.0001, 3e-05, 9e-06]
  """
  o = config.optimizer
  # Read now: a config changed later (in a notebook) must not change it.
  learning_rate, decay_factor = o.learning_rate, o.decay_factor
  warmup_steps = o.warmup_steps
  boundaries = jnp.array([round(m * steps_per_epoch) for m in o.milestones],
                         jnp.int32)

  def schedule(step):
    passed = jnp.sum(step >= boundaries)
    rate = learning_rate * decay_factor ** passed
    if warmup_steps:
      rate *= jnp.minimum(1.0, (step + 1) / warmup_steps)
    return rate

  return schedule


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (L2 in the gradient, as PyTorch's), AdamW or SGD, by config.

  Weight decay reaches kernels only (`weight_decay_mask`); the embedding
  head and the proxies learn `head_lr_multiplier` / `proxy_lr_multiplier`
  times faster than the backbone.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from tcm_jax import train
    >>> config = train.default_config()
    >>> config.optimizer.name, config.optimizer.head_lr_multiplier = 'sgd', 10.0
    >>> config.optimizer.momentum, config.optimizer.learning_rate = 0.0, 0.1
    >>> optimizer = train.create_optimizer(config, lambda step: 0.1)
    >>> params = {'encoder': {'backbone': {'b': {'bias': jnp.zeros(1)}},
    ...                       'head': {'b': {'bias': jnp.zeros(1)}}}}
    >>> grads = {'encoder': {'backbone': {'b': {'bias': jnp.ones(1)}},
    ...                      'head': {'b': {'bias': jnp.ones(1)}}}}
    >>> updates, _ = optimizer.update(grads, optimizer.init(params), params)
    >>> [round(float(u[0]), 4) for u in jax.tree.leaves(updates)]
    [-0.1, -1.0]
  """
  o = config.optimizer
  _check_choice('optimizer.name', o.name, _OPTIMIZERS)
  decay = optax.add_decayed_weights(o.weight_decay, mask=weight_decay_mask)
  chain = {'adam': [decay, optax.scale_by_adam()],
           'adamw': [optax.scale_by_adam(), decay],
           'sgd': [decay, optax.trace(o.momentum)]}[o.name]
  if o.grad_clip_norm:
    chain.insert(0, optax.clip_by_global_norm(o.grad_clip_norm))
  multipliers = {'backbone': 1.0, 'head': o.head_lr_multiplier,
                 'proxies': o.proxy_lr_multiplier}
  chain += [
      optax.multi_transform({g: optax.scale(m) for g, m in multipliers.items()},
                            parameter_groups),
      optax.scale_by_learning_rate(schedule),
  ]
  return optax.chain(*chain)


# --- The step --------------------------------------------------------------------


def create_training(config: ml_collections.ConfigDict, *, num_classes: int,
                    steps_per_epoch: int, mesh):
  """`(state, train_step, embed)`: a run's initial state and compiled steps.

  The state is replicated over `mesh`; `train_step(state, batch)` is
  `make_train_step`'s and `embed(state, images)` is `make_embed_fn`'s.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import models, parallel, train
    >>> config = train.default_config()  # Smooth-AP + TCM
    >>> config.model = models.encoder_config(
    ...     'resnet18', width=0.25, small_images=True, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, train_step, _ = train.create_training(
    ...     config, num_classes=4, steps_per_epoch=10, mesh=mesh)
    >>> rng = np.random.default_rng(0)
    >>> batch = parallel.shard_batch(
    ...     {'image': rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
    ...      'label': np.repeat(np.arange(4, dtype=np.int32), 4)}, mesh)
    >>> state, metrics = train_step(state, batch)
    >>> int(state.step), bool(metrics['finite']), sorted(metrics)[:3]
    (1, True, ['base', 'finite', 'grad_norm'])
  """
  objective, uses_proxies = create_objective(config)
  graphdef, params, model_state = create_model(config, num_classes,
                                               uses_proxies)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  optimizer = create_optimizer(config, schedule)
  state = parallel.replicate(
      TrainState(jnp.int32(0), params, model_state, optimizer.init(params)),
      mesh)
  return (state,
          make_train_step(graphdef, objective, uses_proxies, optimizer,
                          schedule, mesh),
          make_embed_fn(graphdef, mesh))


@struct.dataclass
class TrainState:
  """Everything a step changes: what a checkpoint holds."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def make_train_step(graphdef, objective, uses_proxies: bool,
                    optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh):
  """The data-parallel step: `step(state, batch) -> (state, metrics)`.

  Per device: embed its rows, take the objective's value and gradients over
  the global batch (`objective.sharded`; JAX sums the replicated
  parameters' gradients over devices), update. TCM's margins are an
  argument, `step(state, batch, tcm_margins=(m_pos, m_neg))` (default: the
  objective's), so that margins re-estimated during training cost no
  recompilation. A step whose loss or
  gradient norm is not finite leaves the state as it was and reports
  `finite = False`; the host stops the run. Metrics: `loss`, the
  objective's parts (`base`, `tcm`, hard-pair fractions), `grad_norm`,
  `learning_rate`, `finite`. `create_training` builds it from a config.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from tcm_jax import models, parallel, train
    >>> config = train.default_config()
    >>> config.loss.name = 'contrastive'
    >>> config.model = models.encoder_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=8)
    >>> objective, uses_proxies = train.create_objective(config)
    >>> graphdef, params, model_state = train.create_model(config, 2, False)
    >>> optimizer = train.create_optimizer(config, lambda step: 1e-3)
    >>> mesh = parallel.data_mesh()
    >>> step = train.make_train_step(graphdef, objective, False, optimizer,
    ...                              lambda step: 1e-3, mesh)
    >>> state = parallel.replicate(train.TrainState(
    ...     jnp.int32(0), params, model_state, optimizer.init(params)), mesh)
    >>> batch = parallel.shard_batch(
    ...     {'image': np.zeros((8, 8, 8, 3), np.float32),
    ...      'label': np.arange(8, dtype=np.int32) % 2}, mesh)
    >>> state, metrics = step(state, batch)
    >>> int(state.step), sorted(metrics)
    (1, ['base', 'finite', 'grad_norm', 'hard_neg_fraction', 'hard_pos_fraction', 'learning_rate', 'loss', 'tcm', 'tcm_neg', 'tcm_pos'])
  """
  def step(state: TrainState, batch, tcm_margins):
    step_objective = registry.with_tcm_margins(objective, tcm_margins[0],
                                               tcm_margins[1])

    def loss_fn(params):
      z, model_state = models.apply(graphdef, params['encoder'],
                                    state.model_state, batch['image'],
                                    train=True)
      extra = (params['proxies'],) if uses_proxies else ()
      loss, parts = step_objective.sharded(z, batch['label'], *extra,
                                           axis_name=parallel.AXIS)
      return loss, (parts, model_state)

    (loss, (parts, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new = TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                     model_state, opt_state)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                             for g in jax.tree.leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for x in jax.tree.leaves(model_state):  # BatchNorm statistics
      finite &= jnp.all(jnp.isfinite(x))
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return new, {'loss': loss, **parts, 'grad_norm': grad_norm,
                 'learning_rate': schedule(state.step), 'finite': finite}

  compiled = parallel.data_parallel(
      step, mesh, in_specs=(P(), P(parallel.AXIS), P()),
      out_specs=(P(), P()), donate_argnums=0)
  tcm = {**registry.LOSSES['tcm'].hyperparameters(),
         **dict(objective.frozen_tcm_hyper or ())}
  default_margins = np.array([tcm['margin_pos'], tcm['margin_neg']],
                             np.float32)

  def train_step(state: TrainState, batch, tcm_margins=None):
    margins = default_margins if tcm_margins is None else np.asarray(
        tcm_margins, np.float32)
    return compiled(state, batch, parallel.replicate(margins, mesh))

  return train_step


def make_embed_fn(graphdef, mesh):
  """`embed(state, images) -> embeddings`, batch sharded over the mesh.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import models, parallel, train
    >>> config = train.default_config()
    >>> config.model = models.encoder_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, _, embed = train.create_training(
    ...     config, num_classes=5, steps_per_epoch=10, mesh=mesh)
    >>> images = parallel.shard_batch(np.zeros((16, 8, 8, 3), np.float32), mesh)
    >>> embed(state, images).shape
    (16, 8)
  """
  def embed(state: TrainState, images):
    z, _ = models.apply(graphdef, state.params['encoder'], state.model_state,
                        images, train=False)
    return z
  return parallel.data_parallel(embed, mesh, in_specs=(P(), P(parallel.AXIS)),
                                out_specs=P(parallel.AXIS))


def embed_split(embed_fn, state: TrainState, split: datasets.Split,
                transform, *, batch_size: int, mesh,
                options: pipeline.LoaderOptions = pipeline.LoaderOptions()
                ) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings `[n, dim]` and labels `[n]` of a whole split, on every host.

  Examples:
    >>> from tcm_jax import models, parallel, train
    >>> from tcm_jax.data import datasets, transforms
    >>> config = train.default_config()
    >>> config.model = models.encoder_config(
    ...     'resnet18', width=0.25, small_images=True, embedding_size=8)
    >>> mesh = parallel.data_mesh()
    >>> state, _, embed = train.create_training(
    ...     config, num_classes=5, steps_per_epoch=10, mesh=mesh)
    >>> test = datasets.load_split('digits', 'test')
    >>> z, labels = train.embed_split(
    ...     embed, state, test, transforms.SmallEvalTransform(size=8),
    ...     batch_size=128, mesh=mesh)
    >>> z.shape, sorted(set(labels.tolist()))
    ((896, 8), [5, 6, 7, 8, 9])
  """
  embeddings, positions = [], []
  for batch in pipeline.eval_batches(
      split, transform, batch_size=batch_size,
      num_processes=jax.process_count(), process_index=jax.process_index(),
      num_devices=mesh.size, options=options):
    z = embed_fn(state, parallel.shard_batch(batch['image'], mesh))
    # Every process's record positions, gathered like the embeddings (-1:
    # padding); the labels are then the split's own.
    index = parallel.to_host(parallel.shard_batch(batch['index'], mesh))
    keep = index >= 0
    embeddings.append(parallel.to_host(z)[keep])
    positions.append(index[keep])
  return np.concatenate(embeddings), split.labels[np.concatenate(positions)]


# --- Logging ---------------------------------------------------------------------


class _Writer:
  """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard events.

  Only process 0 writes. On resume, lines past the restored step are dropped
  (those steps are trained again).
  """

  def __init__(self, workdir: str, resumed_step: int):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self._path):
      with open(self._path) as f:
        kept = [line for line in f if _logged_step(line) <= resumed_step]
      with open(self._path, 'w') as f:
        f.writelines(kept)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                      purge_step=resumed_step + 1)

  def write(self, step: int, kind: str, values: dict[str, float]) -> None:
    if not self._active:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')
    for key, value in values.items():
      self._tensorboard.add_scalar(f'{kind}/{key}', value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._active:
      self._tensorboard.close()


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; a line cut short by a kill is dropped."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError):
    return math.inf


class NonFiniteLossError(FloatingPointError):
  """Training stopped: a step's loss or gradient norm was NaN or infinite."""


def _evaluation_metrics(evaluation: metrics_lib.Evaluation) -> dict[str, float]:
  result = {f'recall_at_{k}': v
            for k, v in evaluation.retrieval.recall_at_k.items()}
  result.update(map_at_r=evaluation.retrieval.map_at_r,
                r_precision=evaluation.retrieval.r_precision,
                opis=evaluation.opis, eps_opis=evaluation.eps_opis)
  return {k: float(v) for k, v in result.items()}


def _eval_kwargs(config) -> dict[str, Any]:
  e = config.eval
  return dict(far_range=tuple(e.far_range), target_far=e.target_far,
              epsilon=e.epsilon, num_thresholds=e.num_thresholds,
              ks=tuple(e.ks), beta=e.beta)


def results_table(values: dict[str, float],
                  baselines: dict[str, dict[str, float]] | None = None) -> str:
  """A markdown table of evaluation metrics, as printed at the end of a run.

  Args:
    values: the model's metrics.
    baselines: optional metrics of raw-input baselines by name (as in
      `metrics.json['baselines']`), one more column each.

  Examples:
    >>> from tcm_jax import train
    >>> print(train.results_table({'recall_at_1': 0.9, 'opis': 0.0123}))
    | metric | model |
    |---|---|
    | recall_at_1 | 0.9000 |
    | opis | 0.0123 |
    >>> print(train.results_table({'recall_at_1': 0.9},
    ...                           {'pixels': {'recall_at_1': 0.8}}))
    | metric | model | pixels |
    |---|---|---|
    | recall_at_1 | 0.9000 | 0.8000 |
  """
  baselines = baselines or {}
  lines = ['| ' + ' | '.join(['metric', 'model', *baselines]) + ' |',
           '|---' * (2 + len(baselines)) + '|']
  for key, value in values.items():
    cells = [value] + [baseline.get(key) for baseline in baselines.values()]
    lines.append(f'| {key} | ' + ' | '.join(
        '-' if v is None else f'{v:.4f}' for v in cells) + ' |')
  return '\n'.join(lines)


def load_results(workdir: str) -> tuple[dict[str, float],
                                        dict[str, dict[str, float]]]:
  """The final metrics of a finished run and of its baselines, from its workdir.

  Returns:
    `(metrics, baselines)` as `train_and_evaluate` returned and
    `results_table` takes them.

  Examples:
    >>> import json, os, tempfile
    >>> from tcm_jax import train
    >>> workdir = tempfile.mkdtemp()
    >>> with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
    ...   json.dump({'recall_at_k': {'1': 0.9}, 'map_at_r': 0.5,
    ...              'r_precision': 0.6, 'opis': 0.01, 'eps_opis': 0.02,
    ...              'baselines': {'pixels': {'recall_at_1': 0.8}}}, f)
    >>> values, baselines = train.load_results(workdir)
    >>> values['recall_at_1'], baselines['pixels']['recall_at_1']
    (0.9, 0.8)
  """
  path = os.path.join(workdir, 'metrics.json')
  with open(path) as f:
    saved = json.load(f)
  return load_results_dict(saved, path)


def load_results_dict(saved: dict, source: str = 'metrics.json'
                      ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """`load_results` of an already-read `metrics.json` dict (`source`: for
  the error message).

  Examples:
    >>> from tcm_jax import train
    >>> values, _ = train.load_results_dict(
    ...     {'recall_at_k': {'1': 0.9}, 'map_at_r': 0.5, 'r_precision': 0.6,
    ...      'opis': 0.01, 'eps_opis': 0.02})
    >>> values['recall_at_1'], values['opis']
    (0.9, 0.01)
  """
  try:
    values = {f'recall_at_{k}': v for k, v in saved['recall_at_k'].items()}
    values.update({k: saved[k] for k in ('map_at_r', 'r_precision', 'opis',
                                         'eps_opis')})
  except (KeyError, AttributeError, TypeError) as e:
    raise ValueError(f'{source} is not the metrics.json of a finished run: '
                     f'{type(e).__name__} {e}.') from None
  return values, saved.get('baselines', {})


def _baseline_metrics(config, train_split: datasets.Split,
                      split: datasets.Split) -> dict[str, dict[str, float]]:
  """Every metric of the raw-input baselines on `split`.

  The PCA is fitted on at most `_PCA_SAMPLE` training images (a seeded
  sample); a baseline that cannot be computed or evaluated (constant images)
  is left out, with a warning.
  """
  from tcm_jax import baselines  # pylint: disable=import-outside-toplevel
  train_rows = np.arange(len(train_split))
  if len(train_rows) > _PCA_SAMPLE:
    train_rows = np.sort(np.random.default_rng(config.seed).choice(
        train_rows, _PCA_SAMPLE, replace=False))
  try:
    features = baselines.baseline_features(
        (train_split.image(i) for i in train_rows),
        (split.image(i) for i in range(len(split))),
        pca_components=config.eval.baseline_pca_components)
  except ValueError as e:  # e.g. training images that do not vary
    logging.warning('The raw-input baselines could not be computed: %s', e)
    return {}
  results = {}
  for name, z in features.items():
    try:
      results[name] = _evaluation_metrics(metrics_lib.evaluate_embeddings(
          z, split.labels, **_eval_kwargs(config)))
    except ValueError as e:
      logging.warning('The %s baseline could not be evaluated: %s', name, e)
  return results


_PCA_SAMPLE = 10000


def _margin_sample(config, inputs: Inputs) -> datasets.Split | None:
  """The images TCM's margins are estimated on (`loss.tcm_from_data`).

  The validation classes, or the training classes' images where the
  dataset has no validation side; never the test classes. A seeded sample
  of at most `max_samples` images, the same at every estimate.
  """
  options = config.loss.tcm_from_data
  if not options.enabled:
    return None
  source = inputs.train if inputs.val is None else inputs.val
  if inputs.val is None:
    logging.info('%s has no validation side: TCM\'s margins come from its '
                 'training classes.', config.dataset.name)
  rows = np.arange(len(source))
  if len(rows) > options.max_samples:
    rows = np.sort(np.random.default_rng(config.seed).choice(
        rows, options.max_samples, replace=False))
  return source.subset(rows)


def _unit_rows(z: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (scaled down first: no overflow), float32
  as in training, for float32 products."""
  z = np.asarray(z, np.float64)
  z = z / np.maximum(np.max(np.abs(z), axis=1, keepdims=True), 1e-300)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300)
  return z.astype(np.float32)


def margins_from_embeddings(embeddings: np.ndarray, labels: np.ndarray, *,
                            hard_pos_fraction: float,
                            hard_neg_fraction: float) -> tuple[float, float]:
  """TCM's `(m+, m-)` from a set of embeddings, as `loss.tcm_from_data` does.

  `losses.margins_from_similarity` of their cosine similarities, every
  ordered pair of distinct rows taking part.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import train
    >>> z = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> m_pos, m_neg = train.margins_from_embeddings(
    ...     z, np.array([0, 0, 1, 1]), hard_pos_fraction=0.5,
    ...     hard_neg_fraction=0.25)
    >>> round(m_pos, 4), m_neg > 0.1
    (0.9939, True)
  """
  z = _unit_rows(embeddings)
  margins = losses.margins_from_similarity(
      jnp.asarray(z @ z.T, jnp.float32), jnp.asarray(labels),
      hard_pos_fraction=hard_pos_fraction,
      hard_neg_fraction=hard_neg_fraction)
  return float(margins.margin_pos), float(margins.margin_neg)


def hard_pair_fractions(embeddings: np.ndarray, labels: np.ndarray,
                        margin_pos: float, margin_neg: float,
                        block: int = 2048) -> dict[str, float]:
  """The fractions of pairs TCM counts as hard at these margins.

  Over every ordered pair of distinct rows, in blocks (never `N x N`):
  positive pairs with cosine similarity <= `margin_pos`, negative pairs
  with similarity >= `margin_neg`, compared in float32 as in training.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import train
    >>> z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 2.0]])
    >>> train.hard_pair_fractions(z, np.array([0, 0, 1, 1]), 0.9, 0.5)
    {'hard_pos_fraction': 0.5, 'hard_neg_fraction': 0.5}
  """
  z = _unit_rows(embeddings)
  labels = np.asarray(labels)
  counts = np.zeros(4)  # hard pos, pos, hard neg, neg
  for start in range(0, len(z), block):
    s = z[start:start + block] @ z.T
    same = labels[start:start + block, None] == labels[None, :]
    rows = np.arange(s.shape[0])
    same[rows, rows + start] = False  # self pairs take no part
    other = labels[start:start + block, None] != labels[None, :]
    counts += [np.sum(same & (s <= np.float32(margin_pos))), np.sum(same),
               np.sum(other & (s >= np.float32(margin_neg))), np.sum(other)]
  return {'hard_pos_fraction': float(counts[0] / max(counts[1], 1)),
          'hard_neg_fraction': float(counts[2] / max(counts[3], 1))}


_ALMOST_NONE, _ALMOST_ALL = 0.001, 0.95


def _warn_hard_fractions(step: int, values: dict[str, float]) -> None:
  """Warns when a TCM part has almost no hard pair or almost only hard ones.

  With almost none the part does nothing; with almost all it pulls on every
  pair instead of correcting the hard ones (a run can collapse that way,
  e.g. with margins from a trained model applied to an untrained one).
  """
  for part in ('pos', 'neg'):
    fraction = values.get(f'hard_{part}_fraction')
    if fraction is None:
      continue
    if fraction < _ALMOST_NONE or fraction > _ALMOST_ALL:
      logging.warning(
          'Step %d: %.1f%% of the batch\'s %s pairs are hard for TCM (%s): '
          'its %s part %s. Check the margins (loss.tcm, or '
          'loss.tcm_from_data).', step, 100 * fraction,
          'positive' if part == 'pos' else 'negative',
          f'm{"+" if part == "pos" else "-"}',
          'positive' if part == 'pos' else 'negative',
          'does almost nothing' if fraction < _ALMOST_NONE else
          'acts on nearly every pair, not on the hard ones')


# --- The run ---------------------------------------------------------------------


def _num_steps(config, steps_per_epoch: int) -> int:
  if config.train.num_steps > 0:
    return config.train.num_steps
  return max(1, math.ceil(config.train.num_epochs * steps_per_epoch))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *,
    devices: Sequence[jax.Device] | None = None,
    callbacks: Sequence[Callable[[int, TrainState], None]] = (),
) -> dict[str, float]:
  """Trains and evaluates as `config` says, resuming from `workdir` if it can.

  Writes into `workdir`: `checkpoints/` (Orbax), `metrics.jsonl` and
  `tensorboard/` (train metrics; `eval`: the validation split's where the
  dataset has one, else the test split's; `test`: the final test metrics
  when they are not the eval ones), and at the end `report.md` (with the
  raw-input baselines), `metrics.json` and `utility_curves.png` of the
  final split (`eval.final_split`, the test split by default), and its
  embeddings and labels in `embeddings.npz` (for
  `python -m tcm_jax.evaluate --embeddings` or `tcm_jax.plots`).

  Args:
    config: from `default_config()` or a file in `configs/`.
    workdir: the run's folder; a run there with checkpoints is resumed.
    devices: the devices to train on (default: all of every process).
    callbacks: `fn(step, state)` called after each step (`step` completed
      steps), e.g. to stop a run from outside. `state` is valid during the
      call only: the next step reuses its buffers.

  Returns:
    The final evaluation metrics (`recall_at_1`, ..., `opis`, `eps_opis`).

  Raises:
    ValueError: an unknown config key or a bad value, before any compilation.
    NonFiniteLossError: a step's loss was not finite; the checkpoints
      written before it are kept.

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import models, train
    >>> config = train.default_config()
    >>> config.dataset.name = 'digits'
    >>> config.input.recipe, config.input.image_size = 'small', 8
    >>> config.input.classes_per_batch, config.input.eval_batch_size = 4, 128
    >>> config.model = models.encoder_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=16)
    >>> config.train.num_steps, config.train.progress_bar = 3, False
    >>> config.eval.baselines = False  # (they would add a section to report.md)
    >>> workdir = tempfile.mkdtemp()
    >>> final = train.train_and_evaluate(config, workdir)
    >>> 0 <= final['opis'] <= 0.25, 0 < final['recall_at_1'] <= 1
    (True, True)
    >>> sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
    ['3']
  """
  check_config(config)
  mesh = parallel.data_mesh(devices)
  if config.input.eval_batch_size % mesh.size:
    raise ValueError(
        f'input.eval_batch_size ({config.input.eval_batch_size}) must be a '
        f'multiple of the number of devices ({mesh.size}).')
  os.makedirs(workdir, exist_ok=True)
  inputs = create_inputs(config, num_devices=mesh.size,
                         num_processes=jax.process_count(),
                         process_index=jax.process_index())
  final_split = inputs.final_split(config.eval.final_split)  # before training
  if inputs.val is None and config.train.eval_every_steps > 0:
    logging.warning(
        '%s has no validation side: periodic evaluation and the best '
        'checkpoint use its test classes.', config.dataset.name)
  state, train_step, embed_fn = create_training(
      config, num_classes=len(inputs.classes),
      steps_per_epoch=inputs.steps_per_epoch, mesh=mesh)
  num_steps = _num_steps(config, inputs.steps_per_epoch)
  config_dict = checkpoint_lib.json_safe(config.to_dict())

  checkpoints = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'),
      keep=config.train.keep_checkpoints,
      best_metric=config.train.best_metric,
      best_mode='min' if 'opis' in config.train.best_metric else 'max')
  start, saved_margins = 0, None
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, start = restored.state, restored.step
    data_state = dict(restored.data_state)
    saved_margins = data_state.pop('tcm_margins', None)
    if data_state != {'step': start}:
      raise ValueError(f'checkpoint {start} holds data state '
                       f'{restored.data_state}, not {{"step": {start}}}.')
    changed = _changed_keys(with_default_keys(restored.config), config_dict)
    different_run = [k for k in changed if not k.startswith(_RESUMABLE)]
    if different_run:
      raise ValueError(
          f'{workdir} holds a run of another config (it differs in '
          f'{", ".join(different_run)}); use a new --workdir.')
    if changed:
      logging.warning('Resuming from step %d with a config that differs in: '
                      '%s', start, ', '.join(changed))
    if start > num_steps:
      raise ValueError(
          f'{workdir} holds a checkpoint at step {start}, past this run\'s '
          f'{num_steps} steps (train.num_steps / train.num_epochs); evaluate '
          'it with python -m tcm_jax.evaluate, or use a new --workdir.')
    logging.info('Resumed from step %d in %s.', start, workdir)
  # Without a checkpoint the run starts afresh: an earlier attempt's lines
  # (step 0's margins included) are dropped.
  writer = _Writer(workdir, start if restored is not None else -1)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config_dict, f, indent=2)
  logging.info(
      'Training %s from %s for %d steps (%d per epoch) on %d devices; '
      'periodic evaluation on %s, final on %s.',
      config.model.name, config.pretrained or 'a random initialisation',
      num_steps, inputs.steps_per_epoch, mesh.size, inputs.selection.name,
      final_split.name)
  batches = pipeline.TrainBatches(inputs.train, inputs.sampler,
                                  inputs.train_transform, start_step=start,
                                  options=loader_options(config))
  from_data = config.loss.tcm_from_data

  def device_batch(batch):
    labels = np.searchsorted(inputs.classes, batch['label']).astype(np.int32)
    return parallel.shard_batch({'image': batch['image'], 'label': labels},
                                mesh)

  def embed(split):
    return embed_split(embed_fn, state, split, inputs.eval_transform,
                       batch_size=config.input.eval_batch_size, mesh=mesh,
                       options=loader_options(config))

  def check(step, step_metrics):
    if bool(step_metrics['finite']):
      return
    parts = ', '.join(f'{k}={float(v):.4g}' for k, v in step_metrics.items()
                      if k not in ('finite', 'learning_rate'))
    last = checkpoints.latest_step()
    kept = ('no checkpoint had been written yet' if last is None else
            f'the last good checkpoint (step {last}) is kept in '
            f'{os.path.join(workdir, "checkpoints")}')
    raise NonFiniteLossError(
        f'Non-finite loss at step {step}: {parts}. Training stopped; the '
        f'state was not updated by this step, and {kept}.')

  margin_sample = _margin_sample(config, inputs)

  def estimate_margins(step):
    margins = margins_from_embeddings(
        *embed(margin_sample),
        hard_pos_fraction=from_data.hard_pos_fraction,
        hard_neg_fraction=from_data.hard_neg_fraction)
    values = {'margin_pos': margins[0], 'margin_neg': margins[1],
              'num_samples': len(margin_sample)}
    writer.write(step, 'margins', values)
    logging.info('Step %d: TCM margins from %s: m+ %.4f, m- %.4f.', step,
                 margin_sample.name, *margins)
    return margins

  def data_state():
    extra = {} if tcm_margins is None else {'tcm_margins': tcm_margins}
    return {**batches.get_state(), **extra}

  tcm_margins = None  # (m+, m-) when they come from the data
  if from_data.enabled:
    tcm_margins = (tuple(saved_margins) if saved_margins is not None
                   else estimate_margins(start))

  import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm.tqdm(total=num_steps, initial=start, unit='step', disable=(
      None if config.train.progress_bar and jax.process_index() == 0
      else True))
  pending = None  # the last step's metrics, checked after the next dispatch
  log_start, log_images = time.perf_counter(), 0
  try:
    for step in range(start + 1, num_steps + 1):
      state, step_metrics = train_step(state, device_batch(next(batches)),
                                       tcm_margins)
      if pending is not None:
        check(*pending)
      pending = (step, step_metrics)
      log_images += inputs.sampler.batch_size
      bar.update()
      for callback in callbacks:
        callback(step, state)
      t = config.train
      at_end = step == num_steps
      due = lambda every: every > 0 and step % every == 0  # pylint: disable=cell-var-from-loop
      log_now = due(t.log_every_steps) or at_end
      eval_now = due(t.eval_every_steps) and not at_end
      save_now = due(t.checkpoint_every_steps) and not at_end
      if log_now or eval_now or save_now:
        check(*pending)  # nothing is logged, evaluated or saved past it
      if log_now:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()
                  if k != 'finite'}
        now = time.perf_counter()
        values['images_per_second'] = log_images / (now - log_start)
        log_start, log_images = now, 0
        writer.write(step, 'train', values)
        _warn_hard_fractions(step, values)
        bar.set_postfix(loss=f'{values["loss"]:.4f}')
        logging.info('step %d: %s', step, ', '.join(
            f'{k} {v:.4g}' for k, v in values.items()))
      eval_values = None
      if eval_now:
        try:
          eval_values = _evaluation_metrics(metrics_lib.evaluate_embeddings(
              *embed(inputs.selection), **_eval_kwargs(config)))
        except ValueError as e:  # e.g. embeddings collapsed early in training
          logging.warning('Step %d: the evaluation failed: %s', step, e)
        else:
          writer.write(step, 'eval', eval_values)
          logging.info('step %d eval: %s', step, eval_values)
      if (tcm_margins is not None and not at_end
          and due(from_data.every_steps)):
        check(*pending)
        tcm_margins = estimate_margins(step)  # for the steps after this one
      # Every evaluated step is saved too, for the best-checkpoint policy.
      if save_now or eval_values is not None:
        checkpoints.save(step, state, data_state=data_state(),
                         config=config_dict, metrics=eval_values)
    bar.close()
    final = selected = None
    try:
      final = _final_evaluation(config, workdir, final_split,
                                *embed(final_split), tcm_margins=tcm_margins)
      # The last step is scored on the selection split like the others, so
      # that the best-checkpoint policy and the eval curve never see test.
      selected = final
      if final_split is not inputs.selection:
        try:
          selected = _evaluation_metrics(metrics_lib.evaluate_embeddings(
              *embed(inputs.selection), **_eval_kwargs(config)))
        except ValueError as e:  # as at the other steps: the run goes on
          logging.warning('Step %d: the evaluation of %s failed: %s',
                          num_steps, inputs.selection.name, e)
          selected = None
    finally:
      # Saved with the metrics, or without them when the evaluation fails
      # (an untrained model whose embeddings all coincide has no threshold
      # range): the trained state is kept either way.
      checkpoints.save(num_steps, state, data_state=data_state(),
                       config=config_dict, metrics=selected)
    if selected is not None:
      writer.write(num_steps, 'eval', selected)
    if selected is not final:
      writer.write(num_steps, 'test', final)
  finally:
    bar.close()
    checkpoints.close()
    writer.close()
  # After the collective save: process 0's slow part (the baselines read the
  # split's images again) keeps no other process waiting at a barrier.
  if jax.process_index() == 0:
    _write_report_sections(config, workdir, inputs, final_split, num_steps)
  return final


def _final_evaluation(config, workdir: str, split: datasets.Split,
                      embeddings: np.ndarray, labels: np.ndarray, *,
                      tcm_margins: tuple[float, float] | None
                      ) -> dict[str, float]:
  """Every metric of `split`; process 0 writes the report and figure.

  `metrics.json` also gets the bootstrap intervals over classes
  (`bootstrap`) and the fractions of `split`'s pairs that TCM would count
  as hard at the run's margins (`tcm_pairs`, for runs without TCM too).
  """
  kwargs = _eval_kwargs(config)
  if jax.process_index() != 0:
    return _evaluation_metrics(
        metrics_lib.evaluate_embeddings(embeddings, labels, **kwargs))
  from tcm_jax import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'embeddings.npz')
  with open(path + '.tmp', 'wb') as f:  # whole or absent, never cut short
    np.savez(f, embeddings=embeddings, labels=labels)
  os.replace(path + '.tmp', path)
  evaluation = evaluate_lib.evaluate_arrays(
      {'embeddings': embeddings, 'labels': labels}, workdir,
      source_name=f'the {split.name} split', show_progress=False, **kwargs)
  if tcm_margins is None:
    tcm_margins = (config.loss.tcm.margin_pos, config.loss.tcm.margin_neg)
  metrics_path = os.path.join(workdir, 'metrics.json')
  _write_json_key(metrics_path, 'tcm_pairs', {
      'margin_pos': float(tcm_margins[0]),
      'margin_neg': float(tcm_margins[1]),
      'from_data': bool(config.loss.tcm_from_data.enabled),
      **hard_pair_fractions(embeddings, labels, *tcm_margins)})
  if config.eval.bootstrap_resamples:
    intervals = metrics_lib.class_bootstrap(
        evaluation, num_resamples=config.eval.bootstrap_resamples,
        confidence=config.eval.bootstrap_confidence, seed=0)
    _write_json_key(metrics_path, 'bootstrap', {
        'num_resamples': config.eval.bootstrap_resamples,
        'confidence': config.eval.bootstrap_confidence, 'seed': 0,
        'over': 'classes',
        'intervals': {name: {'low': i.low, 'high': i.high, 'std': i.std}
                      for name, i in intervals.items()}})
  return _evaluation_metrics(evaluation)


def _write_report_sections(config, workdir: str, inputs: Inputs,
                           split: datasets.Split, num_steps: int) -> None:
  """Adds the baselines, the training and the dataset to `report.md`."""
  final, _ = load_results(workdir)
  margins = logged_margins(workdir)
  if margins:
    _write_json_key(os.path.join(workdir, 'metrics.json'), 'tcm_margins',
                    margins)
  sections = [_training_section(config, inputs, num_steps, margins)]
  if config.dataset.name == 'glyphs':
    from tcm_jax.data import glyphs  # pylint: disable=import-outside-toplevel
    sections.append('\n## Dataset\n\n```\n' + glyphs.dataset_facts(
        config.dataset.glyphs.to_dict(), pretrain=False) + '\n```\n')
  if config.eval.baselines:
    baselines = _baseline_metrics(config, inputs.train, split)
    _write_json_key(os.path.join(workdir, 'metrics.json'), 'baselines',
                    baselines)
    sections.insert(0, _baseline_section(final, baselines, config, split))
  with open(os.path.join(workdir, 'report.md'), 'a') as f:
    f.write(''.join(sections))


def _write_json_key(path: str, key: str, value: Any) -> None:
  with open(path) as f:
    saved = json.load(f)
  saved[key] = value
  with open(path + '.tmp', 'w') as f:
    json.dump(saved, f, indent=2, allow_nan=False)
  os.replace(path + '.tmp', path)


def _baseline_section(final: dict[str, float],
                      baselines: dict[str, dict[str, float]], config,
                      split: datasets.Split) -> str:
  k = config.eval.baseline_pca_components
  omitted = [name for name in ('pixels', f'pca{k}') if name not in baselines]
  return (
      '\n## Against raw-input baselines\n\n'
      f'The same metrics of the {split.name} images themselves: `pixels` are '
      'their pixel values in [0, 1], flattened (images over 32 px, or of '
      f'unequal sizes, resized to 32 x 32); `pca{k}` projects those on the '
      f'whitened principal components (at most {k}) of the training '
      'classes\' images. A trained embedding should beat both.'
      + (f' Omitted, as they could not be computed: {", ".join(omitted)} '
         '(see the log).' if omitted else '') + '\n\n'
      + results_table(final, baselines) + '\n')


def logged_margins(workdir: str) -> list[dict[str, float]]:
  """The TCM margins a run estimated from the data, from its metrics.jsonl.

  One `{'step', 'margin_pos', 'margin_neg', 'num_samples'}` per estimate
  (empty for margins fixed in the config).

  Examples:
    >>> import json, os, tempfile
    >>> from tcm_jax import train
    >>> workdir = tempfile.mkdtemp()
    >>> with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    ...   for record in ({'step': 0, 'kind': 'margins', 'margin_pos': 0.6,
    ...                   'margin_neg': 0.4, 'num_samples': 100},
    ...                  {'step': 5, 'kind': 'train', 'loss': 1.0}):
    ...     _ = f.write(json.dumps(record) + '\\n')
    >>> train.logged_margins(workdir)
    [{'step': 0, 'margin_pos': 0.6, 'margin_neg': 0.4, 'num_samples': 100}]
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  found = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a kill
        continue
      if record.get('kind') == 'margins':
        found.append({k: v for k, v in record.items() if k != 'kind'})
  return found


def _margins_text(config, margins: list[dict[str, float]]) -> str:
  tcm, from_data = config.loss.tcm, config.loss.tcm_from_data
  if not from_data.enabled:
    return f'm+ {tcm.margin_pos:g}, m- {tcm.margin_neg:g}'
  rule = (f'from the data: {100 * from_data.hard_pos_fraction:g}% of '
          f'positive and {100 * from_data.hard_neg_fraction:g}% of negative '
          'pairs hard, ' + (f're-estimated every {from_data.every_steps} steps'
                            if from_data.every_steps else 'estimated once'))
  if not margins:
    return rule
  steps = ', '.join(f'step {m["step"]}: {m["margin_pos"]:.3f}/'
                    f'{m["margin_neg"]:.3f}' for m in margins[:3])
  more = (f', ..., step {margins[-1]["step"]}: '
          f'{margins[-1]["margin_pos"]:.3f}/{margins[-1]["margin_neg"]:.3f}'
          if len(margins) > 3 else '')
  return f'{rule}; m+/m- {steps}{more}'


def _training_section(config, inputs: Inputs, num_steps: int,
                      margins: list[dict[str, float]] = ()) -> str:
  tcm = config.loss.tcm
  objective = config.loss.name + (
      f' + TCM ({_margins_text(config, list(margins))}, lambda '
      f'{tcm.lambda_pos:g}/{tcm.lambda_neg:g})' if tcm.enabled else
      ' (no TCM)')
  start = (f', starting from {config.pretrained}' if config.pretrained
           else ', from a random initialisation')
  batch = config.input.classes_per_batch * config.input.samples_per_class
  sides = ', '.join(
      f'{split.name} {split.num_classes} classes / {len(split)} images'
      for split in (inputs.train, inputs.val, inputs.test) if split is not None)
  selection = (
      f'Periodic evaluation used {inputs.selection.name}; this evaluation '
      f'is of {config.eval.final_split}.' if inputs.val is not None else
      f'The dataset has no validation side: periodic evaluation, if any, '
      f'used {inputs.selection.name}.')
  return (
      f'\n## Training\n\n{config.model.name}{start}, on '
      f'{config.dataset.name} ({sides}), {objective}, {config.optimizer.name} at learning rate '
      f'{config.optimizer.learning_rate:g}; {num_steps} steps of '
      f'{batch} images ({config.input.classes_per_batch} classes x '
      f'{config.input.samples_per_class}). {selection} The whole config is in '
      '`config.json`; the training curves are in `metrics.jsonl` and '
      '`tensorboard/`.\n')


def with_default_keys(saved: dict) -> dict:
  """A saved config dict with the keys it lacks taken from `default_config`.

  A run saved before tcm_jax added a key ran as that key's default, so a
  resumed run (or a study reading its results back) compares like with like.
  The free sections (the encoder's, the base loss's hyperparameters) have no
  fixed keys and are left as they are.

  Examples:
    >>> from tcm_jax import train
    >>> saved = {'seed': 1, 'eval': {'epsilon': 0.2}}
    >>> full = train.with_default_keys(saved)
    >>> full['seed'], full['eval']['epsilon'], full['eval']['final_split']
    (1, 0.2, 'test')
  """
  defaults = checkpoint_lib.json_safe(default_config().to_dict())

  def merge(saved, defaults, prefix):
    merged = dict(saved)
    for key, default in defaults.items():
      if f'{prefix}{key}' in _FREE_SECTIONS:
        continue
      if key not in merged:
        merged[key] = copy.deepcopy(default)
      elif isinstance(merged[key], dict) and isinstance(default, dict):
        merged[key] = merge(merged[key], default, f'{prefix}{key}.')
    return merged

  return merge(saved, defaults, '')


def _changed_keys(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """Dotted keys whose values differ between two config dicts."""
  changed = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changed += _changed_keys(a, b, f'{prefix}{key}.')
    elif a != b:
      changed.append(f'{prefix}{key}')
  return changed
