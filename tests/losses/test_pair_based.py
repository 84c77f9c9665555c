"""Contrastive, triplet and multi-similarity losses against NumPy references."""

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
CASES = [
    ('contrastive', losses.contrastive_loss, reference.contrastive, dict()),
    ('contrastive', losses.contrastive_loss, reference.contrastive,
     dict(margin_pos=0.7, margin_neg=0.2)),
    ('triplet_all', losses.triplet_loss, reference.triplet, dict()),
    ('triplet_all', losses.triplet_loss, reference.triplet, dict(margin=0.3)),
    ('batch_hard', losses.triplet_loss, reference.triplet,
     dict(mining='batch_hard', margin=0.2)),
    ('semi_hard', losses.triplet_loss, reference.triplet,
     dict(mining='semi_hard', margin=0.4)),
    ('multi_similarity', losses.multi_similarity_loss,
     reference.multi_similarity, dict()),
    ('multi_similarity', losses.multi_similarity_loss,
     reference.multi_similarity,
     dict(alpha=1.0, beta=10.0, base=0.2, epsilon=0.3)),
]
IDS = [f'{c[0]}-{i}' for i, c in enumerate(CASES)]


def _similarity(seed, q, r=None):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, 4))
  y = x if r is None else rng.normal(size=(r, 4))
  return reference.cosine(x, y)


@pytest.mark.parametrize('name, loss_fn, reference_fn, hp', CASES, ids=IDS)
def test_value_and_gradient_match_reference(name, loss_fn, reference_fn, hp):
  del name
  s = _similarity(0, 12)
  expected = reference_fn(s, UNEQUAL, **hp)
  expected_grad = reference.numeric_gradient(
      lambda x: reference_fn(x, UNEQUAL, **hp), s)
  loss, grad = jax.jit(jax.value_and_grad(
      functools.partial(loss_fn, **hp)))(s.astype(np.float32), UNEQUAL)
  assert expected > 0
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('name, loss_fn, reference_fn, hp', CASES, ids=IDS)
def test_queries_against_references(name, loss_fn, reference_fn, hp):
  del name
  rng = np.random.default_rng(1)
  s = _similarity(1, 6, 10)
  labels, ref_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 10)
  np.testing.assert_allclose(
      loss_fn(s.astype(np.float32), labels, ref_labels, **hp),
      reference_fn(s, labels, ref_labels, **hp), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name, loss_fn, reference_fn, hp', CASES[::2],
                         ids=IDS[::2])
def test_check_grads(name, loss_fn, reference_fn, hp):
  del name, reference_fn
  with enable_x64(True):
    s = jnp.asarray(_similarity(2, 8), jnp.float64)
    check_grads(lambda x: loss_fn(x, UNEQUAL[:8], **hp), (s,), order=1,
                modes=('rev',), eps=1e-6)


@pytest.mark.parametrize('name, loss_fn, reference_fn, hp', CASES[::2],
                         ids=IDS[::2])
def test_padding_one_class_and_distinct_classes(name, loss_fn, reference_fn,
                                                hp):
  del name
  s = _similarity(3, 15).astype(np.float32)
  s[12:, :] = s[:, 12:] = np.nan  # padding may hold anything
  labels = np.concatenate([UNEQUAL, [0, 1, 2]])
  where = np.arange(15) < 12
  loss, grad = jax.value_and_grad(
      lambda x: loss_fn(x, labels, where=where, **hp))(s)
  np.testing.assert_allclose(
      loss, reference_fn(s[:12, :12], UNEQUAL, **hp), rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[12:] == 0)
  for labels in (np.zeros(6, int), np.arange(6)):
    s6 = _similarity(4, 6).astype(np.float32)
    loss, grad = jax.value_and_grad(lambda x: loss_fn(x, labels, **hp))(s6)
    np.testing.assert_allclose(loss, reference_fn(s6, labels, **hp),
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('call, match', [
    (lambda: losses.contrastive_loss(np.zeros((3, 3)), np.zeros(3, int),
                                     margin_pos=2.0), r'margin_pos must be'),
    (lambda: losses.triplet_loss(np.zeros((3, 3)), np.zeros(3, int),
                                 mining='hardest'), r"mining must be 'all'"),
    (lambda: losses.triplet_loss(np.zeros((3, 3)), np.zeros(3, int),
                                 margin=-0.1), r'margin must be'),
    (lambda: losses.multi_similarity_loss(np.zeros((3, 3)), np.zeros(3, int),
                                          beta=0.0), r'beta must be'),
    (lambda: losses.multi_similarity_loss(np.zeros((3,)), np.zeros(3, int)),
     r'similarity must be a 2-D'),
    (lambda: losses.contrastive_loss(np.zeros((3, 3)), np.zeros(3)),
     r'labels must have an integer dtype'),
])
def test_bad_input(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


@pytest.mark.parametrize('loss_fn, sharded, hp', [
    (losses.contrastive_loss, losses.sharded_contrastive_loss,
     dict(margin_pos=0.8, margin_neg=0.1)),
    (losses.multi_similarity_loss, losses.sharded_multi_similarity_loss,
     dict(beta=10.0, epsilon=0.3)),
    (losses.triplet_loss, losses.sharded_triplet_loss,
     dict(mining='semi_hard', margin=0.4)),
])
def test_eight_devices_equal_one(loss_fn, sharded, hp):
  mesh = Mesh(np.array(jax.devices()), ('data',))
  rng = np.random.default_rng(5)
  z = rng.normal(size=(48, 8)).astype(np.float32)
  labels = np.arange(48) % 12  # each class on four devices
  fn = jax.jit(jax.shard_map(
      lambda z, y: sharded(z, y, axis_name='data', **hp), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P()))
  loss, grad = jax.value_and_grad(fn)(z, labels)
  expected, expected_grad = jax.value_and_grad(
      lambda z: loss_fn(tcm_jax.cosine_similarity(z), labels, **hp))(z)
  assert float(expected) > 0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
