"""BatchNorm: frozen (the paper's recipe) and synchronised across devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from tcm_jax import losses
from tcm_jax import models

CONFIG = {'name': 'resnet18', 'width': 0.25, 'small_images': True,
          'embedding_size': 16}


def _batch(n=16, size=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(1.0, 2.0, (n, size, size, 3)).astype(np.float32)
  return images, np.arange(n) // 4


def _train_step(graphdef, optimizer):

  @jax.jit
  def step(params, state, opt_state, images, labels):
    def loss_fn(params):
      z, new_state = models.apply(graphdef, params, state, images, train=True)
      return losses.tcm_loss_from_embeddings(z, labels) + jnp.mean(z[:, 0]), (
          new_state)
    grads, new_state = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state

  return step


def _leaves(state, kind):
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(nnx.state(state, kind))[0]}


@pytest.mark.parametrize('frozen', [True, False])
def test_frozen_batch_norm_is_unchanged_by_a_training_step(frozen):
  encoder = models.create_encoder({**CONFIG, 'frozen_batch_norm': frozen},
                                  rngs=nnx.Rngs(0))
  # Statistics and affine weights as if pretrained, not at their init values.
  rng = np.random.default_rng(1)
  for _, norm in nnx.iter_graph(encoder):
    if isinstance(norm, (nnx.BatchNorm, models.FrozenBatchNorm)):
      for name in ('scale', 'bias', 'mean', 'var'):
        variable = getattr(norm, name)
        variable[...] = jnp.asarray(rng.uniform(0.5, 1.5, variable.shape),
                                    jnp.float32)
  graphdef, params, state = models.split(encoder)
  # Weight decay would move any weight an optimizer could reach.
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  step = _train_step(graphdef, optimizer)
  new_params, new_state, _ = step(params, state, optimizer.init(params),
                                  *_batch())
  before = models.merge(graphdef, params, state)
  after = models.merge(graphdef, new_params, new_state)

  norm_before = {**_leaves(before, models.Frozen), **_leaves(before, nnx.BatchStat)}
  norm_after = {**_leaves(after, models.Frozen), **_leaves(after, nnx.BatchStat)}
  conv_changed = [
      not np.array_equal(a.conv1.kernel[...], b.conv1.kernel[...])
      for a, b in ((before.backbone, after.backbone),)]
  assert all(conv_changed)
  if frozen:
    # 2 affine + 2 statistics per norm; 20 norms in this ResNet-18.
    assert len(norm_before) == 4 * 20 and len(_leaves(before, models.Frozen)) == 40
    for key, value in norm_before.items():
      np.testing.assert_array_equal(norm_after[key], value, err_msg=key)
  else:
    assert not _leaves(before, models.Frozen)
    stats_before = _leaves(before, nnx.BatchStat)
    stats_after = _leaves(after, nnx.BatchStat)
    assert all(not np.array_equal(stats_after[k], v)
               for k, v in stats_before.items())


def test_frozen_batch_norm_normalises_with_the_stored_statistics():
  norm = models.FrozenBatchNorm(3)
  norm.scale[...] = jnp.array([1.0, 2.0, 0.5])
  norm.bias[...] = jnp.array([0.0, 1.0, -1.0])
  norm.mean[...] = jnp.array([0.5, -1.0, 2.0])
  norm.var[...] = jnp.array([4.0, 1.0, 0.25])
  x = np.random.default_rng(0).normal(size=(5, 2, 2, 3)).astype(np.float32)
  expected = (x - [0.5, -1.0, 2.0]) / np.sqrt(
      np.array([4.0, 1.0, 0.25]) + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
  for train in (True, False):
    np.testing.assert_allclose(norm(x, use_running_average=not train),
                               expected, rtol=1e-5, atol=1e-6)


def test_synchronised_batch_norm_on_8_devices_equals_one_device():
  assert jax.device_count() == 8, 'conftest must give 8 devices'
  mesh = Mesh(np.array(jax.devices()), ('data',))
  images, _ = _batch(n=16)  # 2 images per device

  single = models.create_encoder(CONFIG, rngs=nnx.Rngs(0))
  graphdef, params, state = models.split(single)
  forward = functools.partial(models.apply, train=True)
  z_one, state_one = jax.jit(
      lambda p, s, x: forward(graphdef, p, s, x))(params, state, images)

  synced = models.create_encoder({**CONFIG, 'batch_norm_axis_name': 'data'},
                                 rngs=nnx.Rngs(0))
  graphdef_sync, params_sync, state_sync = models.split(synced)
  sharded = jax.jit(jax.shard_map(
      lambda p, s, x: forward(graphdef_sync, p, s, x), mesh=mesh,
      in_specs=(P(), P(), P('data')), out_specs=(P('data'), P())))
  z_sync, state_sync = sharded(params_sync, state_sync, images)

  np.testing.assert_allclose(z_sync, z_one, rtol=1e-4, atol=1e-5)
  one = _leaves(models.merge(graphdef, params, state_one), nnx.BatchStat)
  sync = _leaves(models.merge(graphdef_sync, params_sync, state_sync),
                 nnx.BatchStat)
  assert one.keys() == sync.keys() and one
  for key in one:
    np.testing.assert_allclose(sync[key], one[key], rtol=1e-4, atol=1e-6,
                               err_msg=key)

  # Without the axis name each device normalises its own 2 images: different.
  local = jax.jit(jax.shard_map(
      lambda p, s, x: forward(graphdef, p, s, x), mesh=mesh,
      in_specs=(P(), P(), P('data')), out_specs=(P('data'), P('data'))))
  z_local, _ = local(params, state, images)
  assert float(jnp.abs(z_local - z_one).max()) > 1e-2
