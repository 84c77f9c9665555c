"""Losses by name, and base + TCM as one objective with its parts."""

import warnings

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced
from tcm_jax.losses import registry

DIRECT = {
    'contrastive': losses.contrastive_loss,
    'triplet': losses.triplet_loss,
    'multi_similarity': losses.multi_similarity_loss,
    'smooth_ap': losses.smooth_ap_loss,
    'recall_at_k': losses.recall_at_k_loss,
}


def _batch(seed=0, n=24):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 8)).astype(np.float32)
  return z, np.arange(n) % 6


def test_every_registered_loss_is_its_function():
  assert set(registry.LOSSES) == set(DIRECT)
  assert registry.names() == sorted(set(DIRECT) | set(registry.PROXY_LOSSES))
  z, labels = _batch()
  s = tcm_jax.cosine_similarity(z)
  for name, fn in DIRECT.items():
    total, parts = registry.objective(name)(s, labels)
    np.testing.assert_allclose(total, fn(s, labels), rtol=1e-6, err_msg=name)
    assert set(parts) == {'base'}
  # TCM is what the objective adds to a base loss, not one itself.
  total, _ = registry.objective('contrastive', tcm={})(s, labels)
  np.testing.assert_allclose(
      total, losses.contrastive_loss(s, labels) + tcm_jax.tcm_loss(s, labels),
      rtol=1e-6)
  with pytest.raises(ValueError, match=r"'tcm' is not a base loss"):
    registry.objective('tcm')


def test_base_plus_tcm_with_hyperparameters():
  z, labels = _batch(1)
  s = tcm_jax.cosine_similarity(z)
  fn = registry.objective('multi_similarity', beta=10.0,
                          tcm=dict(margin_pos=0.8, lambda_neg=0.5))
  total, parts = jax.jit(fn)(s, labels)
  base = losses.multi_similarity_loss(s, labels, beta=10.0)
  tcm = tcm_jax.tcm_loss(s, labels, margin_pos=0.8, lambda_neg=0.5)
  np.testing.assert_allclose(parts['base'], base, rtol=1e-6)
  np.testing.assert_allclose(parts['tcm'], tcm, rtol=1e-6)
  np.testing.assert_allclose(total, base + tcm, rtol=1e-6)
  stats = advanced.tcm_statistics(s, labels, margin_pos=0.8)
  np.testing.assert_allclose(
      parts['hard_pos_fraction'],
      advanced.tcm_diagnostics(stats)['hard_pos_fraction'])


def test_sharded_objective_equals_one_device():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  z, labels = _batch(2, 48)
  fn = registry.objective('recall_at_k', temperature=0.1, tcm={})
  sharded = jax.jit(jax.shard_map(
      lambda z, y: fn.sharded(z, y, axis_name='data'), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P()))
  (total, parts), grad = jax.value_and_grad(
      lambda z: sharded(z, labels), has_aux=True)(z)
  (expected, expected_parts), expected_grad = jax.value_and_grad(
      lambda z: fn(tcm_jax.cosine_similarity(z), labels), has_aux=True)(z)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  for key in expected_parts:
    np.testing.assert_allclose(parts[key], expected_parts[key], rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('call, match', [
    (lambda: registry.objective('arcface_v9'),
     r"unknown loss 'arcface_v9'; registered: \['contrastive'"),
    (lambda: registry.objective('smooth_ap', temprature=0.1),
     r"unknown hyperparameters \['temprature'\] for loss 'smooth_ap'; it "
     r"takes \['max_positives', 'temperature'\]"),
    (lambda: registry.objective('contrastive', tcm=dict(margin=0.3)),
     r"unknown hyperparameters \['margin'\] for loss 'tcm'"),
])
def test_bad_names(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_proxy_objective_is_base_plus_tcm():
  z, labels = _batch(3)
  w = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)
  fn = registry.objective('cosface', scale=8.0, tcm=dict(margin_neg=0.3))
  assert fn.uses_proxies and not registry.objective('contrastive').uses_proxies
  total, parts = jax.jit(fn)(z, labels, {'proxies': w})
  base = losses.cosface_loss(z, labels, w, scale=8.0)
  tcm = tcm_jax.tcm_loss_from_embeddings(z, labels, margin_neg=0.3)
  np.testing.assert_allclose(parts['base'], base, rtol=1e-6)
  np.testing.assert_allclose(parts['tcm'], tcm, rtol=1e-6)
  np.testing.assert_allclose(total, base + tcm, rtol=1e-6)
  alone, parts = registry.objective('proxy_anchor')(z, labels, w)
  np.testing.assert_allclose(alone, losses.proxy_anchor_loss(z, labels, w),
                             rtol=1e-6)
  assert set(parts) == {'base'}
  with pytest.raises(ValueError, match=r"unknown loss 'softmax'"):
    registry.objective('softmax')
  with pytest.raises(ValueError, match=r"unknown hyperparameters \['s'\]"):
    registry.objective('arcface', s=30.0)


def test_init_params_are_the_proxies_of_a_proxy_loss_only():
  rng = jax.random.key(0)
  for name in registry.names():
    params = registry.objective(name).init_params(rng, 6, 8)
    if name in registry.PROXY_LOSSES:
      assert list(params) == ['proxies'] and params['proxies'].shape == (6, 8)
      np.testing.assert_array_equal(
          params['proxies'], jax.random.normal(rng, (6, 8), np.float32))
    else:
      assert params == {}


def test_proxy_objective_is_a_deprecated_alias():
  with pytest.warns(DeprecationWarning, match='use tcm_jax.losses.objective'):
    fn = registry.proxy_objective('arcface', tcm={})
  assert fn == registry.objective('arcface', tcm={})
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(ValueError, match=r"unknown proxy loss 'smooth_ap'"):
      registry.proxy_objective('smooth_ap')


@pytest.mark.parametrize('name', sorted(registry.PROXY_LOSSES))
def test_sharded_proxy_objective_equals_one_device(name):
  """Values and gradients (embeddings and proxies), padded rows included."""
  mesh = Mesh(np.array(jax.devices()), ('data',))
  z, labels = _batch(5, 48)
  w = np.random.default_rng(6).normal(size=(6, 8)).astype(np.float32)
  where = np.ones(48, bool)
  where[[5, 6, 7, 30]] = False  # unequal valid rows per device
  fn = registry.objective(name, tcm={})
  sharded = jax.jit(jax.shard_map(
      lambda z, y, w, m: fn.sharded(z, y, {'proxies': w}, axis_name='data',
                                    where=m),
      mesh=mesh, in_specs=(P('data'), P('data'), P(), P('data')),
      out_specs=P()))
  (total, parts), grads = jax.value_and_grad(
      lambda z, w: sharded(z, labels, w, where), argnums=(0, 1),
      has_aux=True)(z, w)
  (expected, expected_parts), expected_grads = jax.value_and_grad(
      lambda z, w: fn(z, labels, w, where=where), argnums=(0, 1),
      has_aux=True)(z, w)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert parts.keys() == expected_parts.keys()
  for key in expected_parts:
    np.testing.assert_allclose(parts[key], expected_parts[key], rtol=1e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert np.abs(expected_grads[1]).sum() > 0
