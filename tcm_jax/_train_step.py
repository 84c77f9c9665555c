"""One training step over a device mesh: the state it changes and its compiled form.

`tcm_jax.train` builds these from a config (`create_training`) and runs them;
they are public there.
"""

from __future__ import annotations

import functools
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from tcm_jax import models
from tcm_jax import parallel
from tcm_jax.losses import registry

@struct.dataclass
class TrainState:
  """Everything a step changes: what a checkpoint holds."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def train_step(state: TrainState, batch, tcm_margins, *, graphdef,
               objective: registry.Objective,
               optimizer: optax.GradientTransformation,
               schedule: optax.Schedule):
  """One step on one device's rows: `(state, metrics)`.

  Runs inside `jax.shard_map` over `parallel.AXIS` (see `make_train_step`):
  the objective's value and gradients are those of the global batch
  (`objective.sharded`; JAX sums the replicated parameters' gradients over
  devices). `tcm_margins` is `[m+, m-]`, TCM's margins for this step. A
  step whose loss, gradient norm or BatchNorm statistics are not finite
  leaves the state as it was and reports `finite = False`.

  Examples:
    >>> import functools
    >>> from tcm_jax import train
    >>> step = functools.partial(train.train_step, graphdef=None,
    ...                          objective=None, optimizer=None, schedule=None)
    >>> sorted(step.keywords)  # what make_train_step binds
    ['graphdef', 'objective', 'optimizer', 'schedule']
  """
  step_objective = registry.with_tcm_margins(objective, tcm_margins[0],
                                             tcm_margins[1])

  def loss_fn(params):
    z, model_state = models.apply(graphdef, params['encoder'],
                                  state.model_state, batch['image'],
                                  train=True)
    loss, parts = step_objective.sharded(z, batch['label'], params,
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


class TrainStep:
  """The compiled step `step(state, batch[, tcm_margins])`: TCM's margins
  are an argument (default: the objective's), so that margins re-estimated
  during training cost no recompilation."""

  def __init__(self, compiled, default_margins: np.ndarray, mesh):
    self._compiled, self._default, self._mesh = compiled, default_margins, mesh

  def _margins(self, tcm_margins):
    margins = self._default if tcm_margins is None else np.asarray(
        tcm_margins, np.float32)
    return parallel.replicate(margins, self._mesh)

  def __call__(self, state: TrainState, batch, tcm_margins=None):
    return self._compiled(state, batch, self._margins(tcm_margins))

  def lower(self, state: TrainState, batch, tcm_margins=None):
    """JAX's lowering of the call, e.g. for `.compile().cost_analysis()`."""
    return self._compiled.lower(state, batch, self._margins(tcm_margins))


def make_train_step(graphdef, objective: registry.Objective,
                    optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh) -> TrainStep:
  """`train_step` over `mesh`: `step(state, batch) -> (state, metrics)`.

  The state is replicated and donated, the batch sharded over the mesh.
  Metrics: `loss`, the objective's parts (`base`, `tcm`, hard-pair
  fractions), `grad_norm`, `learning_rate`, `finite` (the host stops the
  run when False). `create_training` builds it from a config.

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from tcm_jax import config as config_lib, optimizer, parallel, train
    >>> config = config_lib.default_config()
    >>> config.loss.name = 'contrastive'
    >>> config.model = config_lib.model_config(
    ...     'vit_ti', patch_size=4, image_size=8, embedding_size=8)
    >>> objective = train.create_objective(config)
    >>> graphdef, params, model_state = train.create_model(config, 2, objective)
    >>> tx, schedule = optimizer.create(config, steps_per_epoch=10)
    >>> mesh = parallel.data_mesh()
    >>> step = train.make_train_step(graphdef, objective, tx, schedule, mesh)
    >>> state = parallel.replicate(train.TrainState(
    ...     jnp.int32(0), params, model_state, tx.init(params)), mesh)
    >>> batch = parallel.shard_batch(
    ...     {'image': np.zeros((8, 8, 8, 3), np.float32),
    ...      'label': np.arange(8, dtype=np.int32) % 2}, mesh)
    >>> state, metrics = step(state, batch)
    >>> int(state.step), sorted(metrics)
    (1, ['base', 'finite', 'grad_norm', 'hard_neg_fraction', 'hard_pos_fraction', 'learning_rate', 'loss', 'tcm', 'tcm_neg', 'tcm_pos'])
  """
  step = functools.partial(train_step, graphdef=graphdef, objective=objective,
                           optimizer=optimizer, schedule=schedule)
  compiled = parallel.data_parallel(
      step, mesh, in_specs=(P(), P(parallel.AXIS), P()),
      out_specs=(P(), P()), donate_argnums=0)
  margins = objective.tcm_margins or (0.0, 0.0)  # (without TCM: unused)
  return TrainStep(compiled, np.array(margins, np.float32), mesh)
