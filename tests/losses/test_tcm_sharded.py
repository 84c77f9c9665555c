"""The cross-device TCM loss equals the one-device loss of the global batch."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced

NUM_DEVICES = 8
PER_DEVICE = 6


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == NUM_DEVICES, 'conftest must give 8 devices'
  return Mesh(np.array(jax.devices()), ('data',))


def _global_batch(seed=0):
  """48 rows; each class's samples are spread over several devices."""
  rng = np.random.default_rng(seed)
  n = NUM_DEVICES * PER_DEVICE
  z = rng.normal(size=(n, 16)).astype(np.float32)
  # Class c sits at rows c, c + 12, c + 24, c + 36: on four different devices.
  labels = np.arange(n) % 12
  return z, labels


def _sharded(mesh, fn, num_args):
  return jax.jit(jax.shard_map(
      fn, mesh=mesh, in_specs=(P('data'),) * num_args, out_specs=P()))


HYPERPARAMETERS = [
    dict(),
    dict(margin_pos=0.3, margin_neg=0.0, lambda_pos=0.5, lambda_neg=2.0),
]


@pytest.mark.parametrize('hp', HYPERPARAMETERS)
def test_loss_and_embedding_gradients_equal_one_device(mesh, hp):
  z, labels = _global_batch()
  sharded = _sharded(
      mesh, functools.partial(losses.sharded_tcm_loss, axis_name='data', **hp),
      num_args=2)
  loss, grad = jax.value_and_grad(sharded)(z, labels)
  expected, expected_grad = jax.jit(jax.value_and_grad(
      functools.partial(tcm_jax.tcm_loss_from_embeddings, **hp)))(z, labels)
  assert float(expected) > 0.05  # both parts have hard pairs to disagree on
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_statistics_equal_one_device(mesh):
  z, labels = _global_batch(1)
  sharded = _sharded(
      mesh, functools.partial(advanced.sharded_tcm_statistics, axis_name='data'),
      num_args=2)
  got = sharded(z, labels)
  want = advanced.tcm_statistics(tcm_jax.cosine_similarity(z), labels)
  assert got.pos_count == want.pos_count == 48 * 3
  for name in ('hard_pos_count', 'hard_neg_count', 'neg_count'):
    assert int(getattr(got, name)) == int(getattr(want, name))
  np.testing.assert_allclose(got.hard_pos_sum, want.hard_pos_sum, rtol=1e-5)
  np.testing.assert_allclose(got.hard_neg_sum, want.hard_neg_sum, rtol=1e-5)


def test_padded_rows_on_some_devices(mesh):
  z, labels = _global_batch(2)
  where = np.ones(len(z), bool)
  where[[5, 11, 17, 40, 41]] = False  # padding on four devices
  z[~where] = np.nan  # whatever padded rows hold must not matter
  sharded = _sharded(
      mesh, lambda z, y, w: losses.sharded_tcm_loss(z, y, axis_name='data',
                                                    where=w),
      num_args=3)
  loss, grad = jax.value_and_grad(sharded)(z, labels, where)
  keep = np.flatnonzero(where)
  expected, expected_grad = jax.value_and_grad(
      tcm_jax.tcm_loss_from_embeddings)(z[keep], labels[keep])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad[keep], expected_grad, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad[~where]) == 0.0)


def test_parameter_gradient_inside_shard_map_equals_one_device(mesh):
  """As a trainer computes it: grad of replicated params inside shard_map."""
  z, labels = _global_batch(3)
  params = np.random.default_rng(4).normal(size=(16, 8)).astype(np.float32)

  def local_step(params, x, y):
    return jax.value_and_grad(
        lambda w: losses.sharded_tcm_loss(x @ w, y, axis_name='data'))(params)

  step = jax.jit(jax.shard_map(
      local_step, mesh=mesh, in_specs=(P(), P('data'), P('data')),
      out_specs=(P(), P())))
  loss, grad = step(params, z, labels)
  expected, expected_grad = jax.value_and_grad(
      lambda w: tcm_jax.tcm_loss_from_embeddings(z @ w, labels))(params)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_diagnostics_of_sharded_statistics(mesh):
  z, labels = _global_batch(5)
  sharded = _sharded(
      mesh,
      lambda z, y: advanced.tcm_diagnostics(
          advanced.sharded_tcm_statistics(z, y, axis_name='data')),
      num_args=2)
  got = sharded(z, labels)
  want = advanced.tcm_diagnostics(
      advanced.tcm_statistics(tcm_jax.cosine_similarity(z), labels))
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
