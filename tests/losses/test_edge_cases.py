"""Every registry loss at the edges: scale, non-finite pairs, padding, empty
batches, bad labels, and `query_offset` (issue 17).

Parametrised over `tcm_jax.losses.registry`, so that a loss added to the
registry is held to the same rules.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced
from tcm_jax.losses import registry
from tests.losses import reference

NAMES = registry.names()
PAIR_NAMES = sorted(registry.LOSSES)
PROXY_NAMES = sorted(registry.PROXY_LOSSES)
TCM_CHOICES = [None, {}]
TCM_IDS = ['base', 'with_tcm']
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
NUM_CLASSES = 4


def _embeddings(seed=0, n=12, dim=4):
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _proxies(seed=1):
  return _embeddings(seed, NUM_CLASSES)


def _loss_of_embeddings(fn, z, labels, proxies, **kwargs):
  """`(loss, parts)` of an objective from embeddings, for either kind."""
  if fn.uses_proxies:
    return fn(z, labels, proxies, **kwargs)
  return fn.from_embeddings(z, labels, **kwargs)


# 1. Scale: huge and tiny embeddings give the cosine of the unscaled ones.


@pytest.mark.parametrize('tcm', TCM_CHOICES, ids=TCM_IDS)
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [1e19, 1e-25])
def test_losses_do_not_depend_on_the_scale_of_the_embeddings(name, tcm,
                                                             scale):
  fn = registry.objective(name, tcm=tcm)
  z, w = _embeddings(), _proxies()
  expected, expected_grads = jax.value_and_grad(
      lambda z, w: _loss_of_embeddings(fn, z, LABELS, w)[0],
      argnums=(0, 1))(z, w)
  loss, grads = jax.value_and_grad(
      lambda z, w: _loss_of_embeddings(fn, z, LABELS, w)[0],
      argnums=(0, 1))(z * np.float32(scale), w * np.float32(scale))
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  # Each loss is a function of the direction of each row alone: its
  # gradient scales as 1 / scale.
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got, np.float64) * scale, want,
                               rtol=1e-4, atol=1e-5)


def test_tcm_of_huge_embeddings_is_that_of_their_directions():
  """The issue's case: 1e19 squared overflows float32."""
  z = jax.random.normal(jax.random.key(0), (8, 4))
  y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  expected, _ = reference.tcm(reference.cosine(np.asarray(z)), y)
  np.testing.assert_allclose(
      tcm_jax.tcm_loss_from_embeddings(z * 1e19, y), expected, rtol=1e-5)
  np.testing.assert_allclose(expected, 1.509, atol=1e-3)


# 3. A non-finite similarity of a pair that takes part makes the loss NaN.


@pytest.mark.parametrize('tcm', TCM_CHOICES, ids=TCM_IDS)
@pytest.mark.parametrize('name', PAIR_NAMES)
@pytest.mark.parametrize('fill', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('pair', [(0, 1), (0, 2)], ids=['positive',
                                                         'negative'])
def test_a_non_finite_pair_gives_a_nan_loss(name, tcm, fill, pair):
  fn = registry.objective(name, tcm=tcm)
  s = np.asarray(tcm_jax.cosine_similarity(_embeddings()))
  assert np.isfinite(float(fn(s, LABELS)[0]))
  bad = s.copy()
  bad[pair] = fill
  total, parts = fn(bad, LABELS)
  assert np.isnan(float(total)) and np.isnan(float(parts['base']))
  if tcm is not None:  # TCM alone surfaces it too
    assert np.isnan(float(parts['tcm']))
  assert np.isnan(float(jax.jit(fn)(bad, LABELS)[0]))
  # A self pair or a padded entry takes no part: it may hold anything.
  on_diagonal = s.copy()
  on_diagonal[3, 3] = fill
  np.testing.assert_allclose(fn(on_diagonal, LABELS)[0], fn(s, LABELS)[0],
                             rtol=1e-6)
  where = np.ones(12, bool)
  where[0] = False
  np.testing.assert_allclose(fn(bad, LABELS, where=where)[0],
                             fn(s, LABELS, where=where)[0], rtol=1e-6)


@pytest.mark.parametrize('name', PAIR_NAMES)
def test_a_nan_pair_gives_nan_in_a_batch_without_positives(name):
  """Where the loss is otherwise its documented 0 (no positive pair)."""
  fn = registry.objective(name)
  s = np.array(tcm_jax.cosine_similarity(_embeddings()))
  labels = np.arange(12)
  if name in ('smooth_ap', 'recall_at_k', 'triplet'):  # no term at all
    assert float(fn(s, labels)[0]) == 0.0
  s[0, 2] = np.nan
  assert np.isnan(float(fn(s, labels)[0]))


@pytest.mark.parametrize('variant', [
    dict(mining='batch_hard'), dict(mining='semi_hard', margin=0.4)])
@pytest.mark.parametrize('fill', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('pair', [(0, 1), (0, 2)], ids=['positive',
                                                         'negative'])
def test_a_non_finite_pair_gives_nan_for_every_triplet_mining(variant, fill,
                                                              pair):
  """Batch-hard mining alone would pass over +inf on a positive pair (never
  the least similar) and -inf on a negative (never the most similar)."""
  s = np.array(tcm_jax.cosine_similarity(_embeddings()))
  s[pair] = fill
  assert np.isnan(float(losses.triplet_loss(s, LABELS, **variant)))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('fill', [np.nan, np.inf])
def test_a_non_finite_embedding_gives_a_nan_loss(name, fill):
  fn = registry.objective(name, tcm={})
  z = _embeddings()
  z[0, 1] = fill
  assert np.isnan(float(_loss_of_embeddings(fn, z, LABELS, _proxies())[0]))


def test_nan_reaches_every_device_of_the_cross_device_form():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  z = _embeddings(n=16)
  z[3, 0] = np.nan
  labels = np.arange(16) % 4
  fn = registry.objective('multi_similarity', tcm={})
  total, parts = jax.jit(jax.shard_map(
      lambda z, y: fn.sharded(z, y, axis_name='data'), mesh=mesh,
      in_specs=(P('data'), P('data')), out_specs=P()))(z, labels)
  assert np.isnan(float(total)) and np.isnan(float(parts['base']))


# 4. Padding: NaN in padded rows, value and gradients of the unpadded batch.


@pytest.mark.parametrize('tcm', TCM_CHOICES, ids=TCM_IDS)
@pytest.mark.parametrize('name', NAMES)
def test_nan_padding_gives_the_unpadded_value_and_gradients(name, tcm):
  fn = registry.objective(name, tcm=tcm)
  z, w = _embeddings(), _proxies()
  z_pad = np.concatenate([z, np.full((3, 4), np.nan, np.float32)])
  labels_pad = np.concatenate([LABELS, [0, 1, 2]])
  where = np.arange(15) < 12

  def loss(z, w, labels, **kwargs):
    return _loss_of_embeddings(fn, z, labels, w, **kwargs)

  (expected, expected_parts), expected_grads = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(z, w, LABELS)
  (got, parts), grads = jax.jit(jax.value_and_grad(
      lambda z, w, m: loss(z, w, labels_pad, where=m), argnums=(0, 1),
      has_aux=True))(z_pad, w, where)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert parts.keys() == expected_parts.keys()
  for key in parts:
    np.testing.assert_allclose(parts[key], expected_parts[key], rtol=1e-6,
                               atol=1e-7)
  np.testing.assert_allclose(grads[0][:12], expected_grads[0], rtol=1e-5,
                             atol=1e-7)
  assert np.all(np.asarray(grads[0][12:]) == 0.0)
  np.testing.assert_allclose(grads[1], expected_grads[1], rtol=1e-5,
                             atol=1e-7)
  assert np.abs(np.asarray(expected_grads[0])).sum() > 0


@pytest.mark.parametrize('tcm', TCM_CHOICES, ids=TCM_IDS)
@pytest.mark.parametrize('name', PAIR_NAMES)
def test_similarity_form_padding_holds_for_the_similarity_itself(name, tcm):
  """The similarity form: padded entries get a zero gradient, whatever they
  hold (the gradient reaches embeddings only through the user's similarity)."""
  fn = registry.objective(name, tcm=tcm)
  s = np.asarray(tcm_jax.cosine_similarity(_embeddings()))
  s_pad = np.full((15, 15), np.nan, np.float32)
  s_pad[:12, :12] = s
  labels_pad = np.concatenate([LABELS, [0, 1, 2]])
  where = np.arange(15) < 12
  expected, expected_grad = jax.value_and_grad(
      lambda s: fn(s, LABELS)[0])(s)
  got, grad = jax.value_and_grad(
      lambda s: fn(s, labels_pad, where=where)[0])(s_pad)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(grad[:12, :12], expected_grad, rtol=1e-5,
                             atol=1e-7)
  assert np.all(np.asarray(grad)[12:] == 0) and np.all(
      np.asarray(grad)[:, 12:] == 0)


def test_from_embeddings_takes_references_and_equals_the_similarity_form():
  fn = registry.objective('contrastive', tcm={})
  z, refs = _embeddings(3, 5), _embeddings(4, 7)
  labels, ref_labels = LABELS[:5], LABELS[:7]
  total, parts = fn.from_embeddings(z, labels, refs, ref_labels)
  expected, expected_parts = fn(tcm_jax.cosine_similarity(z, refs), labels,
                                ref_labels)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  np.testing.assert_allclose(parts['tcm'], expected_parts['tcm'], rtol=1e-6)
  with pytest.raises(ValueError, match=r'ref_embeddings and ref_labels must '
                     r'be given together'):
    fn.from_embeddings(z, labels, refs)
  with pytest.raises(ValueError, match=r"loss 'arcface' scores embeddings "
                     r'against its proxies'):
    registry.objective('arcface').from_embeddings(z, labels, refs, ref_labels)


# 6. Empty batches give 0 with zero gradients; bad labels name `labels`.


def _empty_call(fn, num_rows, **kwargs):
  """`(loss, grads)` of an objective on a batch of `num_rows` rows."""
  z = np.zeros((num_rows, 4), np.float32)
  labels = np.zeros(num_rows, np.int32)
  if fn.uses_proxies:
    return jax.value_and_grad(lambda w: fn(z, labels, w, **kwargs)[0])(
        _proxies())
  return jax.value_and_grad(lambda s: fn(s, labels, **kwargs)[0])(
      np.zeros((num_rows, num_rows), np.float32))


@pytest.mark.parametrize('tcm', TCM_CHOICES, ids=TCM_IDS)
@pytest.mark.parametrize('name', NAMES)
def test_an_empty_batch_gives_zero_with_zero_gradients(name, tcm):
  fn = registry.objective(name, tcm=tcm)
  for call in (lambda: _empty_call(fn, 0),
               lambda: jax.jit(lambda: _empty_call(fn, 0))(),
               lambda: _empty_call(fn, 5, where=np.zeros(5, bool))):
    loss, grad = call()
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize('mining', ['all', 'batch_hard', 'semi_hard'])
def test_an_empty_batch_gives_zero_for_every_triplet_mining(mining):
  for shape in ((0, 0), (0, 3)):
    ref_labels = None if shape[1] == 0 else np.zeros(3, int)
    loss = losses.triplet_loss(np.zeros(shape, np.float32),
                               np.zeros(0, int), ref_labels, mining=mining)
    assert float(loss) == 0.0


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('labels, received', [
    (None, 'None'),
    (np.array(['a'] * 12), r'array of dtype <U1'),
    ('aaaaaaaaaaaa', r'str'),
    ([[0, 1], [2]], r'list'),
])
def test_labels_that_are_not_integers_name_labels(name, labels, received):
  fn = registry.objective(name)
  with pytest.raises(TypeError, match=(
      r'labels must be an integer array of shape \(12,\) \(class ids\), got '
      + received)):
    _loss_of_embeddings(fn, _embeddings(), labels, _proxies())


def test_reference_labels_that_are_not_integers_name_ref_labels():
  with pytest.raises(TypeError, match=r'ref_labels must be an integer array '
                     r'of shape \(5,\) \(class ids\), got array of dtype '
                     r'object'):
    advanced.pair_masks(np.zeros((3, 5), np.float32), np.zeros(3, int),
                        np.array([None] * 5))


# 2. query_offset: concrete offsets are checked, traced ones are not.

QUERY_OFFSET_FUNCTIONS = {
    'pair_masks': advanced.pair_masks,
    'tcm_statistics': advanced.tcm_statistics,
    'tcm_loss': losses.tcm_loss,
    'contrastive_statistics': advanced.contrastive_statistics,
    'contrastive_loss': losses.contrastive_loss,
    'triplet_statistics': advanced.triplet_statistics,
    'triplet_loss': losses.triplet_loss,
    'multi_similarity_statistics': advanced.multi_similarity_statistics,
    'multi_similarity_loss': losses.multi_similarity_loss,
    'smooth_ap_statistics': advanced.smooth_ap_statistics,
    'smooth_ap_loss': losses.smooth_ap_loss,
    'recall_at_k_statistics': advanced.recall_at_k_statistics,
    'recall_at_k_loss': losses.recall_at_k_loss,
    'objective': lambda *args, **kwargs: registry.objective(
        'smooth_ap', tcm={})(*args, **kwargs),
}


@pytest.fixture(name='row_block')
def _row_block():
  """Queries 0..3 of 8, against all 8 references."""
  y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  s = np.asarray(tcm_jax.cosine_similarity(_embeddings(n=8)))
  return s[:4], y[:4], y


@pytest.mark.parametrize('name', QUERY_OFFSET_FUNCTIONS)
@pytest.mark.parametrize('offset, error, match', [
    (100, ValueError, r'query_offset must be an integer in \[0, 4\] \(the '
     r'index of the first of the 4 queries among the 8 references\), got '
     r'100'),
    (-3, ValueError, r'query_offset must be an integer in \[0, 4\] .* got -3'),
    (1.5, TypeError, r'query_offset must be an integer, got float 1.5'),
    (2.0, TypeError, r'query_offset must be an integer, got float 2.0'),
    (np.float32(2), TypeError, r'query_offset must be an integer, got '
     r'float32 2.0'),
    (True, TypeError, r'query_offset must be an integer, got bool True'),
])
def test_concrete_query_offsets_are_checked(name, offset, error, match,
                                            row_block):
  s, labels, ref_labels = row_block
  fn = QUERY_OFFSET_FUNCTIONS[name]
  with pytest.raises(error, match=match):
    fn(s, labels, ref_labels, exclude_self=True, query_offset=offset)
  for good in (0, 4, np.int64(2), jnp.int32(3)):
    fn(s, labels, ref_labels, exclude_self=True, query_offset=good)


def test_a_traced_float_query_offset_fails_at_trace_time(row_block):
  s, labels, ref_labels = row_block
  with pytest.raises(TypeError, match=r'query_offset must be an integer, got '
                     r'a traced value of dtype float32'):
    jax.jit(lambda o: losses.tcm_loss(s, labels, ref_labels,
                                      exclude_self=True, query_offset=o))(1.0)


def test_query_offset_range_needs_the_queries_inside_the_references():
  with pytest.raises(ValueError, match=r'query_offset: with exclude_self=True '
                     r'the 5 queries must be a block of the 3 references'):
    advanced.pair_masks(np.zeros((5, 3), np.float32), np.zeros(5, int),
                        np.zeros(3, int), exclude_self=True)
  # Without exclude_self the offset is unused, and any integer is accepted.
  masks = advanced.pair_masks(np.zeros((5, 3), np.float32), np.zeros(5, int),
                              np.zeros(3, int), query_offset=7)
  assert int(masks.positive.sum()) == 15


@pytest.mark.parametrize('offset', [100, -3, 2])
def test_a_traced_query_offset_excludes_the_pairs_it_points_at(offset,
                                                               row_block):
  """Documented: query i loses its pair with reference i + query_offset when
  that index is among the references, and keeps every pair otherwise."""
  s, labels, ref_labels = row_block
  stats = jax.jit(lambda o: advanced.contrastive_statistics(
      s, labels, ref_labels, exclude_self=True, query_offset=o))(offset)
  pos_sum = neg_sum = pos_count = neg_count = 0.0
  for i in range(4):
    for j in range(8):
      if j == i + offset:
        continue
      if labels[i] == ref_labels[j]:
        pos_sum += max(1.0 - float(s[i, j]), 0.0)
        pos_count += 1
      else:
        neg_sum += max(float(s[i, j]), 0.0)
        neg_count += 1
  np.testing.assert_allclose(
      [stats.pos_sum, stats.pos_count, stats.neg_sum, stats.neg_count],
      [pos_sum, pos_count, neg_sum, neg_count], rtol=1e-6)
