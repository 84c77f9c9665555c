"""The config's numeric and flag keys: each key's test and what it expects.

`tcm_jax.config.check_config` runs every test and fails with
`'{key} must be {expected}, got {value!r}.'`. Plain Python (no NumPy, no
jax), so that loading a config stays light; NumPy scalars pass as numbers
because NumPy registers them with `numbers`.
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


def _real(test):
  return lambda value, config: _is_real(value) and test(value, config)


def _flag(value: Any, _) -> bool:
  return isinstance(value, bool)


# Each key's test (of its value and the whole config) and what it expects.
RANGES = (
    ('seed', _int_from(0), 'an int >= 0'),
    ('pretrained_head', _flag, 'a bool'),
    ('input.image_size', _int_from(1), 'an int >= 1'),
    ('input.resize_size', _int_from(1), 'an int >= 1'),
    ('input.classes_per_batch', _int_from(1), 'an int >= 1'),
    ('input.samples_per_class', _int_from(1), 'an int >= 1'),
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
    ('eval.bootstrap_resamples', _int_from(0), 'an int >= 0'),
    ('eval.bootstrap_confidence', _real(lambda v, _: 0 < v < 1), 'in (0, 1)'),
)
