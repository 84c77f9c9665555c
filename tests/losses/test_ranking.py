"""Smooth-AP and the Recall@k surrogate against NumPy references."""

import functools

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import tcm_jax
from tcm_jax import losses
from tests.losses import reference

enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
              else jax.experimental.enable_x64)

UNEQUAL = np.array([3, 0, 0, 1, 0, 2, 1, 0, 2, 4, 0, 5])
LOSSES = {
    'smooth_ap': (losses.smooth_ap_loss, reference.smooth_ap),
    'recall_at_k': (losses.recall_at_k_loss, reference.recall_at_k),
}
# Temperatures wide enough that gradients are not all saturated at 0.
HYPERPARAMETERS = {
    'smooth_ap': [dict(), dict(temperature=0.1)],
    'recall_at_k': [dict(), dict(temperature=0.1, ks=(1, 3), k_temperature=0.5)],
}


def _similarity(seed, q, r=None):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, 4))
  y = x if r is None else rng.normal(size=(r, 4))
  return reference.cosine(x, y)


def _cases():
  for name in LOSSES:
    for hp in HYPERPARAMETERS[name]:
      yield name, hp


@pytest.mark.parametrize('name, hp', list(_cases()))
def test_value_and_gradient_match_reference(name, hp):
  loss_fn, reference_fn = LOSSES[name]
  s = _similarity(0, 12)
  expected = reference_fn(s, UNEQUAL, **hp)
  expected_grad = reference.numeric_gradient(
      lambda x: reference_fn(x, UNEQUAL, **hp), s)
  loss, grad = jax.jit(jax.value_and_grad(
      functools.partial(loss_fn, **hp)))(s.astype(np.float32), UNEQUAL)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('name, hp', list(_cases()))
def test_queries_against_references(name, hp):
  loss_fn, reference_fn = LOSSES[name]
  rng = np.random.default_rng(1)
  s = _similarity(1, 5, 9)
  labels, ref_labels = rng.integers(0, 3, 5), rng.integers(0, 3, 9)
  expected = reference_fn(s, labels, ref_labels, **hp)
  got = loss_fn(s.astype(np.float32), labels, ref_labels, **hp)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', LOSSES)
def test_max_positives_bounds_the_work_exactly(name):
  loss_fn, _ = LOSSES[name]
  labels = np.repeat(np.arange(4), 3)  # two positives per query
  s = _similarity(2, 12).astype(np.float32)
  exact = loss_fn(s, labels)
  np.testing.assert_allclose(loss_fn(s, labels, max_positives=2), exact,
                             rtol=1e-6)
  assert abs(float(loss_fn(s, labels, max_positives=1)) - float(exact)) > 1e-4


@pytest.mark.parametrize('name', LOSSES)
@pytest.mark.parametrize('max_positives', [1, 2])
def test_truncated_positives_match_reference(name, max_positives):
  loss_fn, reference_fn = LOSSES[name]
  s = _similarity(7, 12)
  hp = dict(temperature=0.1, max_positives=max_positives)
  np.testing.assert_allclose(loss_fn(s.astype(np.float32), UNEQUAL, **hp),
                             reference_fn(s, UNEQUAL, **hp), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('name', LOSSES)
def test_check_grads(name):
  loss_fn, _ = LOSSES[name]
  with enable_x64(True):
    s = jnp.asarray(_similarity(3, 8), jnp.float64)
    labels = UNEQUAL[:8]
    check_grads(lambda x: loss_fn(x, labels, temperature=0.2), (s,), order=1,
                modes=('rev',), eps=1e-5)


@pytest.mark.parametrize('name', LOSSES)
def test_padding_gives_the_unpadded_value_and_finite_gradients(name):
  loss_fn, _ = LOSSES[name]
  rng = np.random.default_rng(4)
  z = rng.normal(size=(12, 4)).astype(np.float32)
  z_pad = np.concatenate([z, np.full((3, 4), np.nan, np.float32)])
  labels_pad = np.concatenate([UNEQUAL, [0, 1, 2]])
  where = np.arange(15) < 12

  def embedding_loss(z, labels, where=None):
    if where is not None:  # padded rows may hold NaN: zero them first
      z = jnp.where(where[:, None], z, 0.0)
    return loss_fn(tcm_jax.cosine_similarity(z), labels, where=where)

  loss, grad = jax.value_and_grad(embedding_loss)(z, UNEQUAL)
  loss_pad, grad_pad = jax.value_and_grad(
      lambda z: embedding_loss(z, labels_pad, where=where))(z_pad)
  np.testing.assert_allclose(loss_pad, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_pad[:12], grad, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad_pad[12:]) == 0.0)


@pytest.mark.parametrize('name', LOSSES)
@pytest.mark.parametrize('labels', [np.zeros(6, int), np.arange(6)])
def test_one_class_and_all_distinct_batches(name, labels):
  loss_fn, reference_fn = LOSSES[name]
  s = _similarity(5, 6).astype(np.float32)
  loss, grad = jax.value_and_grad(loss_fn)(s, labels)
  np.testing.assert_allclose(loss, reference_fn(s, labels), rtol=1e-5,
                             atol=1e-6)
  assert np.all(np.isfinite(grad))
  if len(set(labels)) == len(labels):  # no positives: documented 0
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize('call, match', [
    (lambda: losses.smooth_ap_loss(np.zeros((3, 3)), np.zeros(3, int),
                                   temperature=0.0), r'temperature must be'),
    (lambda: losses.recall_at_k_loss(np.zeros((3, 3)), np.zeros(3, int),
                                     k_temperature=-1.0),
     r'k_temperature must be'),
    (lambda: losses.recall_at_k_loss(np.zeros((3, 3)), np.zeros(3, int),
                                     ks=(0, 2)), r'ks must be positive'),
    (lambda: losses.smooth_ap_loss(np.zeros((3, 3)), np.zeros(3, int),
                                   max_positives=0), r'max_positives must be'),
    (lambda: losses.smooth_ap_loss(np.zeros((3, 3)), np.zeros(3, int),
                                   max_positives=True), r'max_positives must'),
    (lambda: losses.smooth_ap_loss(np.zeros((3, 4)), np.zeros(3, int)),
     r'square'),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_ks_must_be_a_sequence():
  with pytest.raises(TypeError, match=r'ks must be a tuple of positive '
                     r'integers, got 1'):
    losses.recall_at_k_loss(np.zeros((3, 3)), np.zeros(3, int), ks=1)


@pytest.mark.parametrize('name, sharded', [
    ('smooth_ap', losses.sharded_smooth_ap_loss),
    ('recall_at_k', losses.sharded_recall_at_k_loss),
])
def test_eight_devices_equal_one(name, sharded):
  loss_fn, _ = LOSSES[name]
  mesh = Mesh(np.array(jax.devices()), ('data',))
  rng = np.random.default_rng(6)
  z = rng.normal(size=(48, 8)).astype(np.float32)
  labels = np.arange(48) % 12  # each class on four devices
  hp = dict(temperature=0.1)
  fn = jax.jit(jax.shard_map(
      lambda z, y: sharded(z, y, axis_name='data', **hp), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P()))
  loss, grad = jax.value_and_grad(fn)(z, labels)
  expected, expected_grad = jax.value_and_grad(
      lambda z: loss_fn(tcm_jax.cosine_similarity(z), labels, **hp))(z)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
