"""Tests of the TCM loss against the worked example of docs/definitions.md and a NumPy reference."""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced
from tests.losses import reference

# jax.enable_x64 is new in JAX 0.8; older versions in setup.cfg's range have
# only the experimental one.
enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
              else jax.experimental.enable_x64)

GOLDEN_EMBEDDINGS = np.array([[0, 1], [0.43, 0.9], [1, 0], [0.5, 0.5]],
                             np.float32)
GOLDEN_LABELS = np.array([0, 0, 1, 1])

LABEL_LAYOUTS = {
    'p_by_k': np.repeat(np.arange(4), 3),
    'unequal_sizes': np.array([3, 0, 0, 1, 0, 2, 1, 0, 2, 4, 0, 5]),
    'one_class': np.zeros(12, int),
    'all_distinct': np.arange(12),
}
HYPERPARAMETERS = [
    dict(),
    dict(margin_pos=0.5, margin_neg=0.0, lambda_pos=0.3, lambda_neg=2.0),
    dict(margin_pos=0.2, margin_neg=-0.3, lambda_pos=1.5, lambda_neg=0.0),
]


def _embeddings(seed, n, dim=4):
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _kwargs(hp):
  """The hyperparameters under the reference's argument names."""
  full = dict(margin_pos=0.9, margin_neg=0.5, lambda_pos=1.0, lambda_neg=1.0)
  full.update(hp)
  return full


def _assert_away_from_margins(similarity, hp, gap=1e-4):
  """Finite differences and float32 must not move a pair across a margin."""
  kw = _kwargs(hp)
  for margin in (kw['margin_pos'], kw['margin_neg']):
    assert np.min(np.abs(similarity - margin)) > gap, 'pick another seed'


def test_golden_vector_through_jit():
  similarity = tcm_jax.cosine_similarity(GOLDEN_EMBEDDINGS)
  loss = jax.jit(tcm_jax.tcm_loss)(similarity, GOLDEN_LABELS)
  assert abs(float(loss) - 0.517876) < 1e-6
  parts = advanced.tcm_diagnostics(
      advanced.tcm_statistics(similarity, GOLDEN_LABELS))
  # The worked example prints the parts to 6 digits; the negative part is 0.3249831
  # in float64 (its 0.324982 is truncated), hence 2e-6.
  assert abs(float(parts['tcm_pos']) - 0.192893) < 2e-6
  assert abs(float(parts['tcm_neg']) - 0.324982) < 2e-6
  from_embeddings = jax.jit(tcm_jax.tcm_loss_from_embeddings)(
      GOLDEN_EMBEDDINGS, GOLDEN_LABELS)
  assert abs(float(from_embeddings) - 0.517876) < 1e-6


@pytest.mark.parametrize('layout', LABEL_LAYOUTS)
@pytest.mark.parametrize('hp_index', range(len(HYPERPARAMETERS)))
def test_matches_numpy_reference_self_pairs(layout, hp_index):
  hp = HYPERPARAMETERS[hp_index]
  labels = LABEL_LAYOUTS[layout]
  z = _embeddings(hp_index, len(labels))
  similarity = np.asarray(tcm_jax.cosine_similarity(z))
  expected, expected_grad = reference.tcm(similarity, labels, **_kwargs(hp))

  loss, grad = jax.jit(jax.value_and_grad(
      functools.partial(tcm_jax.tcm_loss, **hp)))(similarity, labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('hp_index', range(len(HYPERPARAMETERS)))
def test_matches_numpy_reference_queries_against_references(hp_index):
  hp = HYPERPARAMETERS[hp_index]
  rng = np.random.default_rng(10 + hp_index)
  queries, refs = _embeddings(20 + hp_index, 6), _embeddings(30 + hp_index, 10)
  labels, ref_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 10)
  similarity = reference.cosine(queries, refs)
  _assert_away_from_margins(similarity, hp)
  expected, grad_s = reference.tcm(similarity, labels, ref_labels,
                                   **_kwargs(hp))
  expected_dq, expected_dr = reference.cosine_backward(queries, refs, grad_s)

  loss_fn = functools.partial(tcm_jax.tcm_loss_from_embeddings, **hp)
  loss, (dq, dr) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2)))(
      queries, labels, refs, ref_labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dq, expected_dq, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dr, expected_dr, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('layout', ['p_by_k', 'unequal_sizes'])
def test_embedding_gradients_match_reference(layout):
  labels = LABEL_LAYOUTS[layout]
  z = _embeddings(3, len(labels))
  similarity = reference.cosine(z)
  _assert_away_from_margins(similarity, {})
  _, grad_s = reference.tcm(similarity, labels)
  d_rows, d_cols = reference.cosine_backward(z, z, grad_s)
  grad = jax.jit(jax.grad(tcm_jax.tcm_loss_from_embeddings))(z, labels)
  np.testing.assert_allclose(grad, d_rows + d_cols, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('hp_index', range(len(HYPERPARAMETERS)))
def test_check_grads(hp_index):
  hp = HYPERPARAMETERS[hp_index]
  labels = LABEL_LAYOUTS['unequal_sizes']
  with enable_x64(True):
    z = jnp.asarray(_embeddings(40, len(labels)), jnp.float64)
    _assert_away_from_margins(reference.cosine(z), hp, gap=1e-3)
    loss_fn = lambda z: tcm_jax.tcm_loss_from_embeddings(z, labels, **hp)
    check_grads(loss_fn, (z,), order=2, modes=('rev',), eps=1e-5)


@pytest.mark.parametrize('part', ['pos', 'neg'])
def test_part_without_hard_pairs_is_zero_with_zero_gradient(part):
  labels = LABEL_LAYOUTS['p_by_k']
  similarity = np.asarray(tcm_jax.cosine_similarity(_embeddings(5, 12)))
  # No similarity is below -1 or above 1: the chosen part has no hard pair.
  hp = dict(margin_pos=-1.0) if part == 'pos' else dict(margin_neg=1.0)
  other_lambda = 'lambda_neg' if part == 'pos' else 'lambda_pos'
  only_this_part = dict(hp, **{other_lambda: 0.0})
  loss, grad = jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels, **only_this_part))(similarity)
  assert float(loss) == 0.0
  assert np.all(np.asarray(grad) == 0.0)

  loss, grad = jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels, **hp))(similarity)
  expected, expected_grad = reference.tcm(similarity, labels, **_kwargs(hp))
  assert expected > 0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('layout', ['one_class', 'all_distinct'])
def test_single_kind_batches_have_finite_zero_gradients(layout):
  labels = LABEL_LAYOUTS[layout]
  z = _embeddings(6, len(labels))
  loss, grad = jax.jit(jax.value_and_grad(tcm_jax.tcm_loss_from_embeddings))(
      z, labels)
  stats = advanced.tcm_statistics(tcm_jax.cosine_similarity(z), labels)
  if layout == 'one_class':
    assert int(stats.neg_count) == 0 and int(stats.pos_count) == 12 * 11
  else:
    assert int(stats.pos_count) == 0 and int(stats.neg_count) == 12 * 11
  expected, _ = reference.tcm(reference.cosine(z), labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert np.all(np.isfinite(grad))


def test_zero_embedding_gives_finite_gradients():
  z = _embeddings(7, 6)
  z[2] = 0.0
  labels = np.array([0, 0, 0, 1, 1, 1])
  grad = jax.grad(tcm_jax.tcm_loss_from_embeddings)(z, labels)
  assert np.all(np.isfinite(grad))


def test_padding_gives_the_unpadded_value_and_gradients():
  labels = LABEL_LAYOUTS['unequal_sizes']
  z = _embeddings(8, len(labels))
  # Padded rows repeat real rows and labels: they would change the loss if
  # the mask let them in.
  z_pad = np.concatenate([z, z[:4]])
  labels_pad = np.concatenate([labels, labels[:4]])
  where = np.arange(len(z_pad)) < len(z)

  loss_fn = jax.jit(jax.value_and_grad(tcm_jax.tcm_loss_from_embeddings))
  loss, grad = loss_fn(z, labels)
  loss_pad, grad_pad = jax.jit(jax.value_and_grad(
      lambda z, y, w: tcm_jax.tcm_loss_from_embeddings(z, y, where=w)))(
          z_pad, labels_pad, where)
  unmasked = tcm_jax.tcm_loss_from_embeddings(z_pad, labels_pad)
  assert abs(float(unmasked) - float(loss)) > 1e-3
  np.testing.assert_allclose(loss_pad, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_pad[:len(z)], grad, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad_pad[len(z):]) == 0.0)


@pytest.mark.parametrize('fill', [0.0, np.nan, np.inf])
def test_padded_rows_may_hold_anything(fill):
  labels = LABEL_LAYOUTS['p_by_k']
  z = _embeddings(15, len(labels))
  z_pad = np.concatenate([z, np.full((3, 4), fill, np.float32)])
  labels_pad = np.concatenate([labels, [0, 1, 2]])
  where = np.arange(len(z_pad)) < len(z)
  loss, grad = jax.value_and_grad(tcm_jax.tcm_loss_from_embeddings)(z, labels)
  loss_pad, grad_pad = jax.value_and_grad(
      lambda z: tcm_jax.tcm_loss_from_embeddings(z, labels_pad, where=where))(
          z_pad)
  np.testing.assert_allclose(loss_pad, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_pad[:len(z)], grad, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad_pad[len(z):]) == 0.0)

  similarity = np.full((15, 15), fill, np.float32)
  similarity[:12, :12] = tcm_jax.cosine_similarity(z)
  loss_s, grad_s = jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels_pad, where=where))(similarity)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  assert np.all(np.isfinite(grad_s))


def test_class_ids_beyond_float32_precision_stay_distinct():
  big = 2**31 - 1
  labels = np.array([big, big - 1, -5, -5, big, 7, big - 1, 0])
  similarity = np.asarray(tcm_jax.cosine_similarity(_embeddings(16, 8)))
  expected, expected_grad = reference.tcm(similarity, labels)
  loss, grad = jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels))(similarity)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
  stats = advanced.tcm_statistics(similarity, labels)
  assert int(stats.pos_count) == 2 + 2 + 2 + 0  # (big), (big-1), (-5) pairs


@pytest.mark.parametrize('fill', [-np.inf, np.nan, np.inf])
def test_self_pairs_may_hold_anything(fill):
  labels = LABEL_LAYOUTS['unequal_sizes']
  similarity = np.array(tcm_jax.cosine_similarity(_embeddings(21, 12)))
  expected, expected_grad = reference.tcm(similarity, labels)
  np.fill_diagonal(similarity, fill)
  loss, grad = jax.jit(jax.value_and_grad(tcm_jax.tcm_loss))(similarity, labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_counts_are_floats_that_add_across_devices_without_wrapping():
  # A global batch of 46,342 rows has more than 2**31 pairs: int32 counts
  # summed over devices would wrap to negative numbers.
  stats = advanced.tcm_statistics(tcm_jax.cosine_similarity(_embeddings(22, 6)),
                                np.array([0, 0, 1, 1, 2, 2]))
  for count in (stats.hard_pos_count, stats.hard_neg_count, stats.pos_count,
                stats.neg_count):
    assert jnp.issubdtype(count.dtype, jnp.floating)
  huge = stats._replace(hard_neg_sum=jnp.float32(0.2 * 2**32),
                        hard_neg_count=jnp.float32(2**32))
  np.testing.assert_allclose(
      advanced.tcm_loss_from_statistics(huge, lambda_pos=0.0), 0.2, rtol=1e-6)


def test_query_and_reference_labels_of_different_dtypes():
  similarity = reference.cosine(_embeddings(17, 4), _embeddings(18, 6))
  labels = np.array([0, 1, 2, 300], np.int64)
  ref_labels = np.array([2, 0, 0, 1, 44, 1], np.uint8)
  expected, _ = reference.tcm(similarity, labels, ref_labels)
  loss = tcm_jax.tcm_loss(similarity.astype(np.float32), labels, ref_labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_bfloat16_similarity_gives_float32_loss():
  labels = LABEL_LAYOUTS['p_by_k']
  similarity = jnp.asarray(reference.cosine(_embeddings(19, 12)), jnp.bfloat16)
  loss = jax.jit(tcm_jax.tcm_loss)(similarity, labels)
  assert loss.dtype == jnp.float32
  expected, _ = reference.tcm(np.asarray(similarity, np.float64), labels)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_float64_under_x64_matches_reference_tightly():
  labels = LABEL_LAYOUTS['unequal_sizes']
  with enable_x64(True):
    z = jnp.asarray(_embeddings(20, 12), jnp.float64)
    loss = jax.jit(tcm_jax.tcm_loss_from_embeddings)(z, labels)
    assert loss.dtype == jnp.float64
    expected, _ = reference.tcm(reference.cosine(z), labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_reference_padding_matches_reference_implementation():
  rng = np.random.default_rng(9)
  similarity = reference.cosine(_embeddings(11, 5), _embeddings(12, 9))
  labels, ref_labels = rng.integers(0, 3, 5), rng.integers(0, 3, 9)
  where = np.array([True, False, True, True, True])
  ref_where = np.array([True] * 6 + [False] * 3)
  expected, expected_grad = reference.tcm(
      similarity, labels, ref_labels, where=where, ref_where=ref_where)
  loss, grad = jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels, ref_labels, where=where,
                                 ref_where=ref_where))(
                                     similarity.astype(np.float32))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_query_offset_excludes_self_pairs_of_a_row_block():
  """Rows 4..7 against all refs, self pairs at offset 4: a block of the full."""
  labels = LABEL_LAYOUTS['p_by_k']
  similarity = tcm_jax.cosine_similarity(_embeddings(13, 12))
  blocks = [
      advanced.tcm_statistics(similarity[i:i + 4], labels[i:i + 4], labels,
                            exclude_self=True, query_offset=i)
      for i in (0, 4, 8)]
  summed = jax.tree.map(lambda *xs: sum(xs), *blocks)
  full = advanced.tcm_statistics(similarity, labels)
  for got, want in zip(summed, full):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_diagnostics_are_hard_pair_fractions():
  labels = LABEL_LAYOUTS['unequal_sizes']
  similarity = reference.cosine(_embeddings(14, 12))
  hard_pos, hard_neg, num_pos, num_neg = reference.hard_pairs(
      similarity, labels)
  stats = jax.jit(advanced.tcm_statistics)(similarity.astype(np.float32),
                                         labels)
  assert (int(stats.hard_pos_count), int(stats.hard_neg_count)) == (
      len(hard_pos), len(hard_neg))
  assert (int(stats.pos_count), int(stats.neg_count)) == (num_pos, num_neg)
  diagnostics = advanced.tcm_diagnostics(stats)
  np.testing.assert_allclose(diagnostics['hard_pos_fraction'],
                             len(hard_pos) / num_pos, rtol=1e-6)
  np.testing.assert_allclose(diagnostics['hard_neg_fraction'],
                             len(hard_neg) / num_neg, rtol=1e-6)


@jax.jit
def _jitted_loss_and_grad(similarity, labels, ref_labels, margin_pos,
                          margin_neg):
  return jax.value_and_grad(
      lambda s: tcm_jax.tcm_loss(s, labels, ref_labels, margin_pos=margin_pos,
                                 margin_neg=margin_neg))(similarity)


# Values the float32 similarity and margins can equal exactly, to test ties
# too. Below 1e-30 in magnitude XLA:CPU flushes differences to zero
# (`_pairs._greater_than`), so such values are left out (0 stays in).
_VALUES = st.floats(-1, 1, width=32).filter(lambda x: x == 0 or abs(x) > 1e-30)


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(
    similarity=hnp.arrays(
        np.float32, st.tuples(st.integers(2, 5), st.integers(2, 5)),
        elements=_VALUES),
    data=st.data(),
    margin_pos=_VALUES,
    margin_neg=_VALUES,
)
def test_property_matches_reference(similarity, data, margin_pos, margin_neg):
  q, r = similarity.shape
  labels = data.draw(hnp.arrays(np.int32, q, elements=st.integers(0, 2)))
  ref_labels = data.draw(hnp.arrays(np.int32, r, elements=st.integers(0, 2)))
  expected, expected_grad = reference.tcm(
      similarity, labels, ref_labels, margin_pos=margin_pos,
      margin_neg=margin_neg)
  loss, grad = _jitted_loss_and_grad(
      similarity, labels, ref_labels, np.float32(margin_pos),
      np.float32(margin_neg))
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 10))
def test_property_invariant_to_permuting_the_batch(seed, n):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 3)).astype(np.float32)
  labels = rng.integers(0, 3, n)
  perm = rng.permutation(n)
  np.testing.assert_allclose(
      tcm_jax.tcm_loss_from_embeddings(z[perm], labels[perm]),
      tcm_jax.tcm_loss_from_embeddings(z, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('call, error, match', [
    (lambda: tcm_jax.tcm_loss(np.zeros((4,)), np.zeros(4, int)),
     ValueError, r'similarity must be a 2-D .* got shape \(4,\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((2, 4, 4)), np.zeros(4, int)),
     ValueError, r'similarity must be a 2-D .* got shape \(2, 4, 4\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(3, int)),
     ValueError, r'labels must have shape \(4,\) .* got shape \(3,\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 5)), np.zeros(4, int)),
     ValueError, r'square .* got shape \(4, 5\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 5)), np.zeros(4, int),
                              np.zeros(4, int)),
     ValueError, r'ref_labels must have shape \(5,\) .* got shape \(4,\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4)),
     TypeError, r'labels must have an integer dtype .* got float'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4), np.float32), np.zeros(4, int),
                              np.zeros(4, np.float32)),
     TypeError, r'ref_labels must have an integer dtype .* got float32'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4), int), np.zeros(4, int)),
     TypeError, r'similarity must have a floating dtype, got int'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              margin_pos=float('nan')),
     ValueError, r'margin_pos must be a finite number in \[-1.0, 1.0\], '
     r'got nan'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              margin_neg=1.5),
     ValueError, r'margin_neg must be .* got 1.5'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              margin_neg=float('-inf')),
     ValueError, r'margin_neg must be .* got -inf'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              lambda_pos=-1.0),
     ValueError, r'lambda_pos must be .* \[0.0, inf\], got -1.0'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              lambda_neg=float('inf')),
     ValueError, r'lambda_neg must be a finite number .* got inf'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              margin_pos=np.ones(2)),
     TypeError, r'margin_pos must be a scalar, got ndarray \(2,\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              margin_pos='0.5'),
     TypeError, r"margin_pos must be a number, got str '0.5'"),
    (lambda: tcm_jax.tcm_loss(np.zeros((2, 2)),
                              np.array([3_000_000_000, 3_000_000_000 + 2**32])),
     ValueError, r'labels holds class ids in \[3000000000, 7294967296\], '
     r'beyond int32'),
    (lambda: tcm_jax.tcm_loss(np.zeros((1, 1)), np.array([-1], np.int32),
                              np.array([2**32 - 1], np.uint32)),
     TypeError, r'labels \(int32\) and ref_labels \(uint32\) have no common'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              where=np.ones(3, bool)),
     ValueError, r'where must have shape \(4,\), got shape \(3,\)'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              where=np.ones(4)),
     TypeError, r'where must be a boolean mask, got dtype float'),
    (lambda: tcm_jax.tcm_loss(np.zeros((4, 4)), np.zeros(4, int),
                              ref_where=np.ones(4, bool)),
     ValueError, r'ref_where must be None when ref_labels is None'),
    (lambda: tcm_jax.tcm_loss_from_embeddings(np.zeros((4, 2)),
                                              np.zeros(4, int),
                                              np.zeros((3, 2))),
     ValueError, r'ref_embeddings and ref_labels must be given together'),
    (lambda: tcm_jax.tcm_loss_from_embeddings(np.zeros((4, 2)),
                                              np.zeros(4, int),
                                              np.zeros((3, 5)),
                                              np.zeros(3, int)),
     ValueError, r'y must be 2-D \[m, 2\] .* got shape \(3, 5\)'),
])
def test_bad_input_raises_clear_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_bad_input_raises_under_jit():
  with pytest.raises(ValueError, match=r'labels must have shape \(4,\)'):
    jax.jit(tcm_jax.tcm_loss)(jnp.zeros((4, 4)), jnp.zeros(3, int))


def test_traced_margins_are_accepted():
  similarity = tcm_jax.cosine_similarity(GOLDEN_EMBEDDINGS)
  loss = jax.jit(lambda s, m: tcm_jax.tcm_loss(s, GOLDEN_LABELS,
                                               margin_pos=m))(similarity, 0.9)
  assert abs(float(loss) - 0.517876) < 1e-6
