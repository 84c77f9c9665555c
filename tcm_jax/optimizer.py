"""The optimizer of a config: parameter groups, weight decay, the schedule.

`create(config, steps_per_epoch)` gives the optax transformation and the
learning-rate schedule it follows. The parameters are those of the trainer,
`{'encoder': {'backbone': ..., 'head': ...}[, 'proxies': ...]}`: the
embedding head and the objective's proxies may learn faster than the
backbone (`head_lr_multiplier`, `proxy_lr_multiplier`), and weight decay
reaches the kernels only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tcm_jax import config as config_lib


def _leaf_name(path) -> str:
  """The parameter's own name ('kernel', 'bias', 'p', ...) from its tree path."""
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  return str(names[-1])


def parameter_groups(params) -> Any:
  """Per-leaf group: 'proxies', 'head' (embedding head) or 'backbone'.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import optimizer
    >>> params = {'encoder': {'backbone': {'conv': {'kernel': np.ones(2)}},
    ...                       'head': {'proj': {'bias': np.ones(2)}}},
    ...           'proxies': np.ones((3, 2))}
    >>> optimizer.parameter_groups(params)
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
    >>> from tcm_jax import optimizer
    >>> params = {'encoder': {'proj': {'kernel': np.ones((2, 2)),
    ...                                'bias': np.ones(2)},
    ...                       'gem': {'p': np.ones(())}},
    ...           'proxies': np.ones((3, 2))}
    >>> optimizer.weight_decay_mask(params)
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
    >>> from tcm_jax import config as config_lib, optimizer
    >>> config = config_lib.default_config()
    >>> config.optimizer.milestones = (1, 2)
    >>> schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10)
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
    >>> from tcm_jax import config as config_lib, optimizer as optimizer_lib
    >>> config = config_lib.default_config()
    >>> config.optimizer.name, config.optimizer.head_lr_multiplier = 'sgd', 10.0
    >>> config.optimizer.momentum, config.optimizer.learning_rate = 0.0, 0.1
    >>> optimizer = optimizer_lib.create_optimizer(config, lambda step: 0.1)
    >>> params = {'encoder': {'backbone': {'b': {'bias': jnp.zeros(1)}},
    ...                       'head': {'b': {'bias': jnp.zeros(1)}}}}
    >>> grads = {'encoder': {'backbone': {'b': {'bias': jnp.ones(1)}},
    ...                      'head': {'b': {'bias': jnp.ones(1)}}}}
    >>> updates, _ = optimizer.update(grads, optimizer.init(params), params)
    >>> [round(float(u[0]), 4) for u in jax.tree.leaves(updates)]
    [-0.1, -1.0]
  """
  o = config.optimizer
  config_lib.check_choice('optimizer.name', o.name, config_lib.OPTIMIZERS)
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


def create(config: ml_collections.ConfigDict, steps_per_epoch: int
           ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`(optimizer, schedule)` of a config: what a training step applies.

  Examples:
    >>> from tcm_jax import config as config_lib, optimizer as optimizer_lib
    >>> optimizer, schedule = optimizer_lib.create(
    ...     config_lib.default_config(), steps_per_epoch=10)
    >>> round(float(schedule(0)), 8)
    0.0001
  """
  schedule = learning_rate_schedule(config, steps_per_epoch)
  return create_optimizer(config, schedule), schedule
