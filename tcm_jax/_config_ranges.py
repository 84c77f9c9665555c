"""The config's values: each key's test and what it expects.

Numbers, flags, strings and tuples, and the rules between keys (e.g. two
images of a class per batch for the losses that compare a batch's images).
`tcm_jax.config.check_config` runs every test in order (a key may have
several: its type first) and fails with `'{key} must be {expected}, got
{value!r}.'`. Plain Python (no NumPy, no jax; `needs_pairs` asks the loss
registry when it runs), so that loading a config stays light; NumPy scalars
pass as numbers because NumPy registers them with `numbers`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _is_int(value: Any) -> bool:
  """A Python or NumPy integer; a bool is not one."""
  # NumPy registers its scalar types with `numbers`; its bool is not Integral.
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  """A finite Python or NumPy real number; a bool is not one."""
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _int_from(low: int):
  return lambda value, _: _is_int(value) and value >= low


# The most thresholds any calibration range can hold: those of the whole
# distance range [0, 2] (`tcm_jax.metrics.advanced.thresholds_between`).
_MAX_THRESHOLDS = 2_097_153
# The edges of the one-pass engine's grid (`engine='histogram'`), every
# distance 2**-14 apart: the most thresholds it can read.
_GRID_EDGES = 33_025


def _num_thresholds(value: Any, _) -> bool:
  return _is_int(value) and 2 <= value <= _MAX_THRESHOLDS


def _real(test):
  return lambda value, config: _is_real(value) and test(value, config)


def _flag(value: Any, _) -> bool:
  return isinstance(value, bool)


def _text(value: Any, _) -> bool:
  return isinstance(value, str)


def _reals(test):
  """A sequence (not a string) of finite reals, each passing `test`."""
  def check(value, _):
    return (isinstance(value, (list, tuple))
            and all(_is_real(v) and test(v) for v in value))
  return check


def _far_range(value: Any, _) -> bool:
  return (isinstance(value, (list, tuple)) and len(value) == 2
          and all(_is_real(v) for v in value)
          and 0 < value[0] < value[1] <= 1)


def _fars(value: Any, _) -> bool:
  return (isinstance(value, (list, tuple))
          and all(_is_real(v) and 0 < v <= 1 for v in value)
          and len(set(value)) == len(value))


def _ks(value: Any, _) -> bool:
  return (isinstance(value, (list, tuple)) and len(value) > 0
          and all(_is_int(k) and k >= 1 for k in value))


def needs_pairs(config) -> bool:
  """Whether the objective needs pairs of images within a batch.

  Every pair and ranking loss compares the images of a batch, and so does
  TCM (its positive part: two images of a class; its negative part: two
  classes); a proxy loss alone compares each image with the class proxies.
  """
  # Imported here: the registry needs jax, which building a config does not
  # (check_config imports it anyway, for the loss's name).
  from tcm_jax.losses import registry  # pylint: disable=import-outside-toplevel
  return bool(config.loss.tcm.enabled) or (
      config.loss.name not in registry.PROXY_LOSSES)


def _per_batch(value: Any, config) -> bool:
  """>= 2 when the objective needs pairs in a batch, else >= 1."""
  return _is_int(value) and value >= (2 if needs_pairs(config) else 1)


_PAIRS = ('a pair or ranking loss, and TCM, compare the images of a batch; '
          'only a proxy loss without TCM (loss.tcm.enabled=False) trains '
          'with 1')


# Each key's test (of its value and the whole config) and what it expects.
RANGES = (
    ('seed', _int_from(0), 'an int >= 0'),
    ('pretrained_head', _flag, 'a bool'),
    ('input.image_size', _int_from(1), 'an int >= 1'),
    ('input.resize_size', _int_from(1), 'an int >= 1'),
    ('input.resize_size',
     lambda v, c: c.input.recipe != 'imagenet' or v >= c.input.image_size,
     '>= input.image_size with the imagenet recipe (the centre crop is cut '
     'from the resized image)'),
    ('input.classes_per_batch', _int_from(1), 'an int >= 1'),
    ('input.classes_per_batch', _per_batch,
     f'an int >= 2 (negative pairs: two classes per batch): {_PAIRS}'),
    ('input.samples_per_class', _int_from(1), 'an int >= 1'),
    ('input.samples_per_class', _per_batch,
     f'an int >= 2 (positive pairs: two images of a class per batch): '
     f'{_PAIRS}'),
    ('input.eval_batch_size', _int_from(1), 'an int >= 1'),
    ('input.num_threads', _int_from(1), 'an int >= 1'),
    ('input.worker_count', _int_from(0), 'an int >= 0'),
    ('input.prefetch', _int_from(1), 'an int >= 1'),
    ('optimizer.learning_rate', _real(lambda v, _: v > 0), '> 0'),
    ('optimizer.decay_factor', _real(lambda v, _: 0 < v <= 1), 'in (0, 1]'),
    ('optimizer.warmup_steps', _int_from(0), 'an int >= 0'),
    ('optimizer.weight_decay', _real(lambda v, _: v >= 0), '>= 0'),
    ('optimizer.grad_clip_norm', _real(lambda v, _: v >= 0), '>= 0'),
    ('optimizer.head_lr_multiplier', _real(lambda v, _: v >= 0), '>= 0'),
    ('optimizer.proxy_lr_multiplier', _real(lambda v, _: v >= 0), '>= 0'),
    ('optimizer.momentum', _real(lambda v, _: 0 <= v < 1), 'in [0, 1)'),
    ('optimizer.milestones', _reals(lambda v: v >= 0),
     'a tuple of epochs >= 0'),
    ('train.num_steps', _int_from(0), 'an int >= 0'),
    ('train.log_every_steps', _int_from(1), 'an int >= 1'),
    ('train.eval_every_steps', _int_from(0), 'an int >= 0'),
    ('train.checkpoint_every_steps', _int_from(0), 'an int >= 0'),
    ('train.keep_checkpoints', _int_from(1), 'an int >= 1'),
    ('train.progress_bar', _flag, 'a bool'),
    ('eval.baseline_pca_components', _int_from(1), 'an int >= 1'),
    ('train.num_epochs',
     _real(lambda v, c: v > 0 or (_is_int(c.train.num_steps)
                                  and c.train.num_steps > 0)),
     '> 0 (or train.num_steps > 0)'),
    ('pretrained', _text, 'a path (a string; empty for none)'),
    ('dataset.data_dir', _text, 'a folder (a string; empty for the default)'),
    ('dataset.train_class_list', _text, 'a path (a string)'),
    ('dataset.test_class_list', _text, 'a path (a string)'),
    ('dataset.train_side', _text, 'a string'),
    ('dataset.synthetic.num_classes', _int_from(2),
     'an int >= 2 (half the classes train, the others test)'),
    ('dataset.synthetic.images_per_class', _int_from(1), 'an int >= 1'),
    ('dataset.synthetic.image_size', _int_from(1), 'an int >= 1'),
    ('dataset.synthetic.channels', lambda v, _: _is_int(v) and v in (1, 3),
     '1 or 3'),
    ('dataset.synthetic.jpeg', _flag, 'a bool'),
    ('dataset.glyphs.characters', _text, 'a string'),
    ('dataset.glyphs.fonts', _text, 'a string'),
    ('dataset.glyphs.pretrain_characters', _text, 'a string'),
    ('dataset.glyphs.cache_dir', _text, 'a folder (a string)'),
    ('dataset.glyphs.image_size', _int_from(4), 'an int >= 4'),
    ('dataset.glyphs.ink_fraction', _real(lambda v, _: 0 < v <= 1),
     'in (0, 1]'),
    ('dataset.glyphs.min_faces', _int_from(1), 'an int >= 1'),
    ('dataset.glyphs.test_fraction', _real(lambda v, _: 0 <= v <= 1),
     'in [0, 1]'),
    ('dataset.glyphs.val_fraction',
     _real(lambda v, c: 0 <= v <= 1 - c.dataset.glyphs.test_fraction),
     'in [0, 1 - dataset.glyphs.test_fraction]'),
    ('loss.tcm.enabled', _flag, 'a bool'),
    ('loss.tcm.margin_pos', _real(lambda v, _: -1 <= v <= 1),
     'in [-1, 1] (a cosine similarity)'),
    ('loss.tcm.margin_neg', _real(lambda v, _: -1 <= v <= 1),
     'in [-1, 1] (a cosine similarity)'),
    ('loss.tcm.lambda_pos', _real(lambda v, _: v >= 0), '>= 0'),
    ('loss.tcm.lambda_neg', _real(lambda v, _: v >= 0), '>= 0'),
    ('loss.tcm_from_data.enabled', _flag, 'a bool'),
    ('loss.tcm_from_data.hard_pos_fraction', _real(lambda v, _: 0 < v < 1),
     'in (0, 1)'),
    ('loss.tcm_from_data.hard_neg_fraction', _real(lambda v, _: 0 < v < 1),
     'in (0, 1)'),
    ('loss.tcm_from_data.every_steps', _int_from(0), 'an int >= 0'),
    ('loss.tcm_from_data.max_samples', _int_from(4), 'an int >= 4'),
    ('loss.tcm_from_data.enabled', lambda v, c: not v or c.loss.tcm.enabled,
     'False when loss.tcm.enabled is False (no TCM, no margins)'),
    ('pretrained_head', lambda v, c: not v or bool(c.pretrained),
     'False without pretrained (there is no head to load)'),
    ('eval.far_range', _far_range,
     'a pair (low, high) of false-accept rates, 0 < low < high <= 1'),
    ('eval.target_far', _real(lambda v, _: 0 < v <= 1),
     'a false-accept rate in (0, 1]'),
    ('eval.epsilon', _real(lambda v, _: 0 < v < 1),
     'in (0, 1) (the fraction of worst classes eps-OPIS averages)'),
    ('eval.num_thresholds', _num_thresholds,
     f'an int from 2 to {_MAX_THRESHOLDS} (the most distinct float32 '
     'thresholds over the distance range [0, 2])'),
    ('eval.ks', _ks, 'a non-empty tuple of ints >= 1'),
    ('eval.beta', _real(lambda v, _: v > 0), '> 0'),
    ('eval.engine', lambda v, _: v in ('exact', 'histogram'),
     "'exact' or 'histogram'"),
    ('eval.num_thresholds',
     lambda v, c: c.eval.get('engine') != 'histogram' or v <= _GRID_EDGES,
     f"at most {_GRID_EDGES} with eval.engine='histogram' (the edges of its "
     'grid, 2**-14 apart)'),
    ('eval.baselines', _flag, 'a bool'),
    ('eval.bootstrap_resamples', _int_from(0), 'an int >= 0'),
    ('eval.bootstrap_confidence', _real(lambda v, _: 0 < v < 1), 'in (0, 1)'),
    ('eval.fars', _fars,
     'a tuple of distinct false-accept rates in (0, 1], or () for none'),
)
