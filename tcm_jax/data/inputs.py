"""A run's inputs from its config: the splits, the sampler, the transforms.

`create_inputs(config)` reads the dataset's sides (train, test and, where the
dataset has one, val), builds the class-balanced sampler over the training
side and the config's image transforms; `loader_options(config)` says how
batches are loaded (threads, worker processes, prefetch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import ml_collections
import numpy as np

from tcm_jax import _config_checks
from tcm_jax import config as config_lib
from tcm_jax.data import datasets
from tcm_jax.data import pipeline
from tcm_jax.data import sampler as sampler_lib
from tcm_jax.data import transforms as transforms_lib


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
    config_lib.check_choice('eval.final_split', name, config_lib.FINAL_SPLITS)
    if name == 'test':
      return self.test
    if self.val is None:
      raise ValueError(
          f"eval.final_split is 'val', but {self.train.name.split('/')[0]} "
          'has no validation side.')
    return self.val


def create_transforms(config: ml_collections.ConfigDict):
  """`(train_transform, eval_transform)` of the config's input recipe.

  'imagenet' (random resized crops; resize and centre crop), 'small' (tiny
  images: resize and random shifts) or 'glyphs' (affine and stroke width, as
  many channels as the model takes).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> from tcm_jax.data import inputs
    >>> config = config_lib.default_config()
    >>> config.input.recipe = 'small'
    >>> [type(t).__name__ for t in inputs.create_transforms(config)]
    ['SmallTrainTransform', 'SmallEvalTransform']
  """
  i = config.input
  config_lib.check_choice('input.recipe', i.recipe, config_lib.RECIPES)
  if i.recipe == 'imagenet':
    return (transforms_lib.TrainTransform(size=i.image_size),
            transforms_lib.EvalTransform(size=i.image_size,
                                         resize=i.resize_size))
  if i.recipe == 'small':
    return (transforms_lib.SmallTrainTransform(size=i.image_size),
            transforms_lib.SmallEvalTransform(size=i.image_size))
  from tcm_jax.data import glyph_transforms  # pylint: disable=import-outside-toplevel
  channels = config.model.get('in_channels', 3)
  stats = dict(mean=(0.5,) * channels, std=(0.5,) * channels,
               channels=channels)
  return (glyph_transforms.GlyphTrainTransform(size=i.image_size, **stats),
          glyph_transforms.GlyphEvalTransform(size=i.image_size, **stats))


def create_inputs(config: ml_collections.ConfigDict, *, num_devices: int = 1,
                  num_processes: int = 1, process_index: int = 0) -> Inputs:
  """Splits, sampler and transforms of a config (see `Inputs`).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> from tcm_jax.data import inputs as inputs_lib
    >>> config = config_lib.default_config()
    >>> config.dataset.name, config.input.recipe = 'digits', 'small'
    >>> config.input.classes_per_batch = 5
    >>> inputs = inputs_lib.create_inputs(config)
    >>> len(inputs.train), inputs.classes.tolist(), inputs.sampler.batch_size
    (901, [0, 1, 2, 3, 4], 20)
    >>> inputs.val is None, inputs.selection.name
    (True, 'digits/test')
  """
  if config.input.eval_batch_size % num_devices:
    raise ValueError(
        f'input.eval_batch_size ({config.input.eval_batch_size}) must be a '
        f'multiple of the number of devices ({num_devices}).')
  # (check_config's own check, for a config that skipped check_config.)
  _config_checks.check_dataset(config)
  d = config.dataset
  class_lists = ((d.train_class_list, d.test_class_list)
                 if d.train_class_list or d.test_class_list else None)
  sides = datasets.DATASETS[d.name].sides
  names = {'train': d.train_side, 'test': 'test', 'val': 'val'}
  split = {side: datasets.load_split(
      d.name, names[side], data_dir=d.data_dir or None,
      class_lists=class_lists, seed=config.seed,
      synthetic=d.synthetic.to_dict(), glyphs=d.glyphs.to_dict())
           for side in ('train', 'test') + (('val',) if 'val' in sides else ())}
  i = config.input
  train_transform, eval_transform = create_transforms(config)
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
    >>> from tcm_jax import config as config_lib
    >>> from tcm_jax.data import inputs
    >>> inputs.loader_options(config_lib.default_config()).num_threads
    8
  """
  return pipeline.LoaderOptions(num_threads=config.input.num_threads,
                                worker_count=config.input.worker_count,
                                prefetch=config.input.prefetch)


def num_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The steps a run trains: `train.num_steps`, or its epochs' steps.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> from tcm_jax.data import inputs
    >>> config = config_lib.default_config()  # 40 epochs
    >>> inputs.num_steps(config, steps_per_epoch=10)
    400
  """
  if config.train.num_steps > 0:
    return config.train.num_steps
  return max(1, math.ceil(config.train.num_epochs * steps_per_epoch))
