"""Every loss is one reduction of its statistics, on one device or many.

`X_loss == X_loss_from_statistics(X_statistics(...))`, and `sharded_X_loss`
is the same reduction of the statistics summed over the mesh; it takes the
hyperparameters of `X_loss`, with the same defaults.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import pytest

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced

PAIR_LOSSES = ('contrastive', 'triplet', 'multi_similarity', 'smooth_ap',
               'recall_at_k', 'tcm')
LOSSES = PAIR_LOSSES + ('proxy_anchor',)
_MASKS = {'where', 'ref_where', 'exclude_self', 'query_offset'}


def _keywords(fn, drop):
  return {p.name: p.default for p in inspect.signature(fn).parameters.values()
          if p.kind == p.KEYWORD_ONLY and p.name not in drop}


def _batch():
  z = jax.random.normal(jax.random.key(0), (16, 8))
  return z, jnp.arange(16) % 4, jnp.arange(16) < 14


def _mesh():
  return Mesh(jax.devices(), ('data',))


@pytest.mark.parametrize('name', LOSSES)
def test_the_sharded_form_takes_the_same_hyperparameters(name):
  one_device = _keywords(getattr(losses, f'{name}_loss'), _MASKS)
  sharded = _keywords(getattr(losses, f'sharded_{name}_loss'),
                      {'axis_name', 'where', 'precision'})
  assert sharded == one_device
  assert list(inspect.signature(
      getattr(losses, f'sharded_{name}_loss')).parameters)[:2] == [
          'embeddings', 'labels']


@pytest.mark.parametrize('name', PAIR_LOSSES)
def test_a_loss_is_the_reduction_of_its_statistics(name):
  z, labels, where = _batch()
  s = tcm_jax.cosine_similarity(z)
  statistics = getattr(advanced, f'{name}_statistics')(s, labels, where=where)
  reduce_fn = getattr(advanced, f'{name}_loss_from_statistics')
  loss = getattr(losses, f'{name}_loss')(s, labels, where=where)
  chex.assert_trees_all_close(reduce_fn(statistics), loss)


@pytest.mark.parametrize('name', PAIR_LOSSES)
def test_summed_statistics_equal_those_of_one_device(name):
  z, labels, where = _batch()
  statistics_fn = getattr(advanced, f'{name}_statistics')
  got = jax.jit(jax.shard_map(
      lambda z, y, w: advanced.sharded_statistics(
          statistics_fn, z, y, axis_name='data', where=w),
      mesh=_mesh(), in_specs=(P('data'),) * 3, out_specs=P()))(
          z, labels, where)
  zeroed = jnp.where(where[:, None], z, 0.0)
  want = statistics_fn(tcm_jax.cosine_similarity(zeroed), labels, where=where)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_proxy_anchor_statistics_summed_over_devices():
  z, labels, where = _batch()
  proxies = jax.random.normal(jax.random.key(1), (4, 8))
  got = jax.jit(jax.shard_map(
      lambda z, y, w, p: advanced.sharded_proxy_anchor_statistics(
          z, y, p, axis_name='data', where=w),
      mesh=_mesh(), in_specs=(P('data'),) * 3 + (P(),), out_specs=P()))(
          z, labels, where, proxies)
  want = advanced.proxy_anchor_statistics(z, labels, proxies, where=where)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
      advanced.proxy_anchor_loss_from_statistics(want),
      losses.proxy_anchor_loss(z, labels, proxies, where=where))
