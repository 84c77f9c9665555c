"""tcm_jax.parallel: mesh, replicated and sharded arrays, the step wrapper."""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from tcm_jax import parallel

NUM_DEVICES = 8


@pytest.fixture(scope='module')
def mesh():
  assert jax.device_count() == NUM_DEVICES, 'conftest must give 8 devices'
  return parallel.data_mesh()


def _shard_rows(array):
  """`{device: host rows}` of a global array's addressable shards."""
  return {shard.device: np.asarray(shard.data)
          for shard in array.addressable_shards}


# --- data_mesh ----------------------------------------------------------------


def test_data_mesh_spans_every_device_on_one_auto_axis(mesh):
  assert mesh.axis_names == (parallel.AXIS,) == ('data',)
  assert mesh.size == NUM_DEVICES
  assert list(mesh.devices) == jax.devices()
  # shard_map rejects replicated inputs on Explicit axes (jax.make_mesh's
  # default); the trainer's replicated parameters need Auto.
  assert mesh.axis_types == (AxisType.Auto,)


def test_data_mesh_of_chosen_devices():
  devices = jax.devices()[2:5]
  mesh = parallel.data_mesh(devices)
  assert mesh.size == 3
  assert list(mesh.devices) == devices


def test_data_mesh_refuses_no_devices():
  with pytest.raises(ValueError, match='devices is empty'):
    parallel.data_mesh([])


# --- replicate ----------------------------------------------------------------


def test_replicate_puts_the_whole_value_on_every_device(mesh):
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3),
          'step': np.int32(7), 'nested': [np.ones(4, np.int64)]}
  replicated = parallel.replicate(tree, mesh)
  assert jax.tree.structure(replicated) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(replicated), jax.tree.leaves(tree)):
    assert isinstance(got, jax.Array)
    assert got.sharding.is_fully_replicated
    assert got.sharding.mesh == mesh
    assert got.shape == np.shape(want)
    shards = _shard_rows(got)
    assert sorted(shards, key=lambda d: d.id) == jax.devices()
    for rows in shards.values():
      np.testing.assert_array_equal(rows, want)


def test_replicate_keeps_float32_and_int32(mesh):
  replicated = parallel.replicate(
      {'x': np.zeros(3, np.float32), 'n': np.int32(0)}, mesh)
  assert replicated['x'].dtype == jnp.float32
  assert replicated['n'].dtype == jnp.int32


# --- shard_batch --------------------------------------------------------------


def test_shard_batch_gives_each_device_its_rows_in_mesh_order(mesh):
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  sharded = parallel.shard_batch(x, mesh)
  assert sharded.shape == (16, 3)
  shards = _shard_rows(sharded)
  rows_per_device = 16 // NUM_DEVICES
  for i, device in enumerate(mesh.devices):
    np.testing.assert_array_equal(
        shards[device], x[i * rows_per_device:(i + 1) * rows_per_device])


def test_shard_batch_of_a_pytree_keeps_rows_together(mesh):
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(24, 4, 4, 3)).astype(np.float32),
           'label': rng.integers(0, 5, size=24).astype(np.int32),
           'extra': (np.arange(24),)}
  sharded = parallel.shard_batch(batch, mesh)
  assert jax.tree.structure(sharded) == jax.tree.structure(batch)
  images, labels = _shard_rows(sharded['image']), _shard_rows(sharded['label'])
  index = _shard_rows(sharded['extra'][0])
  for device in mesh.devices:
    # The same rows of every leaf land on the same device.
    np.testing.assert_array_equal(images[device], batch['image'][index[device]])
    np.testing.assert_array_equal(labels[device], batch['label'][index[device]])
    assert len(index[device]) == 24 // NUM_DEVICES
  assert sharded['label'].dtype == jnp.int32


@pytest.mark.parametrize('shape', [(12, 3), (7,), (4, 8)])
def test_shard_batch_names_a_leading_dim_that_does_not_divide(mesh, shape):
  with pytest.raises(ValueError) as error:
    parallel.shard_batch({'ok': np.zeros((16, 2)), 'bad': np.zeros(shape)},
                         mesh)
  message = str(error.value)
  assert f'shape {shape}' in message
  assert f'{NUM_DEVICES} devices' in message
  assert f'multiple of {NUM_DEVICES}' in message


def test_shard_batch_refuses_a_scalar(mesh):
  with pytest.raises(ValueError, match=r'shape \(\)'):
    parallel.shard_batch(np.float32(1.0), mesh)


def test_shard_batch_over_a_smaller_mesh():
  mesh = parallel.data_mesh(jax.devices()[:2])
  x = np.arange(6)
  sharded = parallel.shard_batch(x, mesh)
  shards = _shard_rows(sharded)
  assert len(shards) == 2
  np.testing.assert_array_equal(shards[mesh.devices[0]], x[:3])
  np.testing.assert_array_equal(shards[mesh.devices[1]], x[3:])


# --- to_host ------------------------------------------------------------------


def test_to_host_gathers_a_sharded_array(mesh):
  x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
  host = parallel.to_host(parallel.shard_batch(x, mesh))
  assert isinstance(host, np.ndarray)
  assert host.dtype == np.float32
  np.testing.assert_array_equal(host, x)


def test_to_host_of_a_replicated_array(mesh):
  x = np.arange(5, dtype=np.int32)
  host = parallel.to_host(parallel.replicate(x, mesh))
  assert isinstance(host, np.ndarray)
  np.testing.assert_array_equal(host, x)


def test_to_host_of_a_computed_output(mesh):
  """The per-device outputs of `data_parallel`, concatenated in mesh order."""
  double = parallel.data_parallel(lambda x: 2 * x, mesh,
                                  in_specs=(P(parallel.AXIS),),
                                  out_specs=P(parallel.AXIS))
  x = np.arange(32, dtype=np.float32).reshape(16, 2)
  np.testing.assert_array_equal(
      parallel.to_host(double(parallel.shard_batch(x, mesh))), 2 * x)


# --- data_parallel ------------------------------------------------------------


def test_data_parallel_runs_one_program_per_device(mesh):
  """Each device sees its rows and its index; psum makes a global sum."""
  def fn(w, x):
    local_rows = jnp.full((1,), x.shape[0])
    index = jax.lax.axis_index(parallel.AXIS)[None]
    total = jax.lax.psum(jnp.sum(w * x), parallel.AXIS)
    return local_rows, index, total

  run = parallel.data_parallel(
      fn, mesh, in_specs=(P(), P(parallel.AXIS)),
      out_specs=(P(parallel.AXIS), P(parallel.AXIS), P()))
  x = np.random.default_rng(2).normal(size=(16, 3)).astype(np.float32)
  w = np.array([1.0, -2.0, 0.5], np.float32)
  rows, index, total = run(parallel.replicate(w, mesh),
                           parallel.shard_batch(x, mesh))
  np.testing.assert_array_equal(parallel.to_host(rows), [2] * NUM_DEVICES)
  np.testing.assert_array_equal(parallel.to_host(index), np.arange(NUM_DEVICES))
  np.testing.assert_allclose(float(total), np.sum(x * w), rtol=1e-5)


def test_data_parallel_is_compiled_once(mesh):
  traces = []

  def fn(x):
    traces.append(x.shape)
    return jax.lax.psum(jnp.sum(x), parallel.AXIS)

  run = parallel.data_parallel(fn, mesh, in_specs=(P(parallel.AXIS),),
                               out_specs=P())
  for seed in range(3):
    x = np.random.default_rng(seed).normal(size=(8,)).astype(np.float32)
    np.testing.assert_allclose(float(run(parallel.shard_batch(x, mesh))),
                               np.sum(x), rtol=1e-5)
  assert traces == [(1,)]  # traced once, with one row per device


def _linear_regression(seed=3, n=32, d=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.normal(size=(n,)).astype(np.float32)
  w = rng.normal(size=(d,)).astype(np.float32)
  return w, x, y


def _mean_squared_error_grad(mesh, n):
  """`(loss, grad)` of the global mean squared error, computed per device."""
  def fn(w, x, y):
    def loss(w):
      # Each device's sum of squares, added over devices, over the global n.
      return jax.lax.psum(jnp.sum((x @ w - y) ** 2), parallel.AXIS) / n
    return jax.value_and_grad(loss)(w)

  return parallel.data_parallel(
      fn, mesh, in_specs=(P(), P(parallel.AXIS), P(parallel.AXIS)),
      out_specs=(P(), P()))


def test_gradient_of_a_replicated_parameter_is_the_global_batch_gradient(mesh):
  """JAX sums a replicated input's gradient over devices: no pmean needed."""
  w, x, y = _linear_regression()
  n = len(x)
  loss, grad = _mean_squared_error_grad(mesh, n)(
      parallel.replicate(w, mesh), parallel.shard_batch(x, mesh),
      parallel.shard_batch(y, mesh))
  residual = x.astype(np.float64) @ w - y
  np.testing.assert_allclose(float(loss), np.mean(residual ** 2), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), 2 / n * x.T @ residual,
                             rtol=1e-5, atol=1e-6)
  assert grad.sharding.is_fully_replicated

  one = parallel.data_mesh(jax.devices()[:1])
  loss_1, grad_1 = _mean_squared_error_grad(one, n)(
      parallel.replicate(w, one), parallel.shard_batch(x, one),
      parallel.shard_batch(y, one))
  np.testing.assert_allclose(float(loss), float(loss_1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_1), rtol=1e-5,
                             atol=1e-6)


def test_data_parallel_donates_the_argument_it_is_told_to(mesh):
  run = parallel.data_parallel(lambda s, x: s + jax.lax.psum(jnp.sum(x),
                                                             parallel.AXIS),
                               mesh, in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(), donate_argnums=0)
  state = parallel.replicate(np.ones(3, np.float32), mesh)
  x = parallel.shard_batch(np.arange(8, dtype=np.float32), mesh)
  new = run(state, x)
  np.testing.assert_array_equal(parallel.to_host(new), 1 + 28.0 * np.ones(3))
  assert state.is_deleted()  # its buffers now hold the result
  assert not x.is_deleted()
