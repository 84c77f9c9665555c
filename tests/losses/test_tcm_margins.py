"""Tests of `margins_from_similarity` against np.quantile of the pairs."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest

import tcm_jax
from tcm_jax import losses
from tcm_jax.losses import advanced

# jax.enable_x64 is new in JAX 0.8; older versions in setup.cfg's range have
# only the experimental one.
enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
              else jax.experimental.enable_x64)

# One compilation per shape, where the eager function compiles op by op.
tcm_statistics = jax.jit(advanced.tcm_statistics,
                         static_argnames=('exclude_self',))

# The margins equal np.quantile of the float64 pair similarities exactly: the
# same order statistics, interpolated by NumPy's own formula in float64.
ATOL = 0


def pair_similarities(similarity, labels, ref_labels=None, *, where=None,
                      ref_where=None, exclude_self=None):
  """The positive and the negative pair similarities, by a loop over entries.

  Written from the definitions: an entry (i, j) takes part unless query i or
  reference j is masked out or, with `exclude_self`, j == i; it is positive
  when the two labels are equal. `ref_labels=None` means the queries are the
  references (then `where` masks both, and self pairs are excluded unless
  `exclude_self=False`).
  """
  s = np.asarray(similarity, np.float64)
  q, r = s.shape
  if ref_labels is None:
    ref_labels, ref_where = labels, where
    exclude_self = True if exclude_self is None else exclude_self
  where = np.ones(q, bool) if where is None else np.asarray(where)
  ref_where = np.ones(r, bool) if ref_where is None else np.asarray(ref_where)
  positives, negatives = [], []
  for i in range(q):
    for j in range(r):
      if not where[i] or not ref_where[j] or (exclude_self and i == j):
        continue
      (positives if labels[i] == ref_labels[j] else negatives).append(s[i, j])
  return np.array(positives), np.array(negatives)


def reference_margins(positives, negatives, hard_pos_fraction=0.2,
                      hard_neg_fraction=0.01):
  return (float(np.clip(np.quantile(positives, hard_pos_fraction), -1, 1)),
          float(np.clip(np.quantile(negatives, 1 - hard_neg_fraction), -1, 1)))


def assert_hard_counts(values, margin, fraction, hard_side):
  """What a linear-interpolation quantile guarantees about the hard pairs.

  `values` are the n pair similarities and `margin` lies between their order
  statistics of ranks floor(h) and ceil(h), h = (n - 1) * p as NumPy computes
  it, with p = `fraction` for positives (hard: S <= margin) and p = 1 -
  `fraction` for negatives (hard: S >= margin). Whatever the ties, at least
  floor(h) + 1 values are <= margin and at most ceil(h) are < margin (for
  negatives: at least n - ceil(h) are >= margin, at most n - 1 - floor(h) are
  > margin). So when no value equals the margin the hard fraction F is in
  [fraction - fraction / n, fraction + (1 - fraction) / n] (the ends only
  through the float64 rounding of h): within 1 / n of the target.
  """
  values = np.asarray(values, np.float64)
  n = len(values)
  if hard_side == 'below':
    h = (n - 1) * fraction
    hard, strictly_hard = values <= margin, values < margin
    assert np.sum(hard) >= math.floor(h) + 1
    assert np.sum(strictly_hard) <= math.ceil(h)
  else:
    h = (n - 1) * (1 - fraction)
    hard, strictly_hard = values >= margin, values > margin
    assert np.sum(hard) >= n - math.ceil(h)
    assert np.sum(strictly_hard) <= n - 1 - math.floor(h)
  if not np.any(values == margin):
    hard_fraction = np.mean(hard)
    slack = 1e-12
    assert fraction - fraction / n - slack <= hard_fraction
    assert hard_fraction <= fraction + (1 - fraction) / n + slack
    assert abs(hard_fraction - fraction) < 1 / n


def _cosine(seed, n, m=None, dim=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = None if m is None else rng.normal(size=(m, dim)).astype(np.float32)
  return np.array(tcm_jax.cosine_similarity(x, y))  # a writable copy


FRACTIONS = [(0.2, 0.01), (0.5, 0.5), (0.03, 0.97), (0.37, 0.11)]


@pytest.mark.parametrize('fractions', FRACTIONS)
def test_square_matrix_without_self_pairs_matches_numpy(fractions):
  similarity = _cosine(0, 16)
  labels = np.repeat(np.arange(4), 4)
  np.fill_diagonal(similarity, np.nan)  # self pairs take no part
  hard_pos, hard_neg = fractions
  margins = losses.margins_from_similarity(
      similarity, labels, hard_pos_fraction=hard_pos,
      hard_neg_fraction=hard_neg)
  positives, negatives = pair_similarities(similarity, labels)
  assert (len(positives), len(negatives)) == (16 * 3, 16 * 12)
  expected = reference_margins(positives, negatives, hard_pos, hard_neg)
  assert isinstance(margins, losses.TCMMargins)
  assert {type(m) for m in margins} == {float}  # Python floats, not NumPy's
  np.testing.assert_allclose(margins, expected, rtol=0, atol=ATOL)
  assert_hard_counts(positives, margins.margin_pos, hard_pos, 'below')
  assert_hard_counts(negatives, margins.margin_neg, hard_neg, 'above')


@pytest.mark.parametrize('fractions', FRACTIONS)
def test_rectangular_matrix_with_reference_labels_matches_numpy(fractions):
  rng = np.random.default_rng(1)
  similarity = _cosine(1, 10, 14)
  labels, ref_labels = rng.integers(0, 3, 10), rng.integers(0, 3, 14)
  hard_pos, hard_neg = fractions
  margins = losses.margins_from_similarity(
      similarity, labels, ref_labels, hard_pos_fraction=hard_pos,
      hard_neg_fraction=hard_neg)
  positives, negatives = pair_similarities(similarity, labels, ref_labels)
  assert len(positives) + len(negatives) == 10 * 14  # no self pairs
  expected = reference_margins(positives, negatives, hard_pos, hard_neg)
  np.testing.assert_allclose(margins, expected, rtol=0, atol=ATOL)


def test_padding_masks_and_exclude_self_choose_the_pairs_as_tcm_statistics():
  rng = np.random.default_rng(2)
  clean = _cosine(2, 12, 15)
  labels, ref_labels = rng.integers(0, 3, 12), rng.integers(0, 3, 15)
  where = rng.random(12) < 0.7
  ref_where = rng.random(15) < 0.7
  padded = clean.copy()
  padded[~where] = np.nan  # padding may hold anything
  padded[:, ~ref_where] = np.inf
  only_rows_padded = clean.copy()
  only_rows_padded[~where] = -np.inf
  cases = [
      (padded, dict(where=where, ref_where=ref_where)),
      (padded, dict(where=where, ref_where=ref_where, exclude_self=True)),
      (only_rows_padded, dict(where=where)),
      (only_rows_padded, dict(where=where, exclude_self=True)),
  ]
  for similarity, kwargs in cases:
    margins = losses.margins_from_similarity(
        similarity, labels, ref_labels, hard_pos_fraction=0.3,
        hard_neg_fraction=0.2, **kwargs)
    positives, negatives = pair_similarities(similarity, labels, ref_labels,
                                             **kwargs)
    np.testing.assert_allclose(
        margins, reference_margins(positives, negatives, 0.3, 0.2), rtol=0,
        atol=ATOL)
    # The same pairs as tcm_statistics counts.
    stats = tcm_statistics(similarity, labels, ref_labels, **kwargs)
    assert (int(stats.pos_count), int(stats.neg_count)) == (len(positives),
                                                            len(negatives))


def test_square_matrix_with_where_and_self_pairs_included():
  similarity = _cosine(3, 12)
  labels = np.array([3, 0, 0, 1, 0, 2, 1, 0, 2, 3, 0, 2])
  where = np.arange(12) < 10
  similarity[10:] = np.nan
  similarity[:, 10:] = np.nan
  for exclude_self in (None, True, False):
    margins = losses.margins_from_similarity(
        similarity, labels, hard_pos_fraction=0.6, hard_neg_fraction=0.05,
        where=where, exclude_self=exclude_self)
    positives, negatives = pair_similarities(
        similarity, labels, where=where, exclude_self=exclude_self)
    if exclude_self is False:
      assert np.sum(positives > 1 - 1e-6) >= 10  # the self pairs, S = 1
    np.testing.assert_allclose(
        margins, reference_margins(positives, negatives, 0.6, 0.05), rtol=0,
        atol=ATOL)


@pytest.mark.parametrize('values, lower_and_upper', [
    # The upper order statistic: another 16-bit digit of the first pass.
    ([0.1, 0.9], 'apart'),
    # The same first 16 bits, the next float32: the second pass finds it.
    ([0.5, float(np.nextafter(np.float32(0.5), np.float32(1)))], 'adjacent'),
    # Equal: the lower order statistic repeated.
    ([0.25, 0.25, 0.25], 'tied'),
    ([-0.75, -0.0, 0.0, 0.5], 'signs'),
])
@pytest.mark.parametrize('fraction', [0.1, 0.5, 0.99])
def test_order_statistics_wherever_they_lie(values, lower_and_upper, fraction):
  """One query against references: its positive pairs are `values`."""
  del lower_and_upper  # in the test id
  values = np.asarray(values, np.float32)
  negatives = np.float32([-0.3, 0.4])
  similarity = np.concatenate([values, negatives])[None, :]
  ref_labels = np.array([0] * len(values) + [1] * len(negatives))
  margins = losses.margins_from_similarity(
      similarity, np.array([0]), ref_labels, hard_pos_fraction=fraction,
      hard_neg_fraction=fraction)
  expected = reference_margins(values.astype(np.float64),
                               negatives.astype(np.float64), fraction,
                               fraction)
  np.testing.assert_allclose(margins, expected, rtol=0, atol=ATOL)
  # And the same with the roles swapped: `values` as the negatives.
  margins = losses.margins_from_similarity(
      similarity, np.array([1]), ref_labels, hard_pos_fraction=fraction,
      hard_neg_fraction=fraction)
  expected = reference_margins(negatives.astype(np.float64),
                               values.astype(np.float64), fraction, fraction)
  np.testing.assert_allclose(margins, expected, rtol=0, atol=ATOL)


def test_ties_all_similarities_equal_make_every_pair_hard():
  similarity = np.full((8, 8), 0.3, np.float32)
  labels = np.repeat(np.arange(4), 2)
  margins = losses.margins_from_similarity(similarity, labels)
  # Exactly the common value, not a rounding of it off to either side.
  assert margins == (float(np.float32(0.3)), float(np.float32(0.3)))
  d = advanced.tcm_diagnostics(tcm_statistics(
      similarity, labels, margin_pos=margins.margin_pos,
      margin_neg=margins.margin_neg))
  assert float(d['hard_pos_fraction']) == 1.0
  assert float(d['hard_neg_fraction']) == 1.0


def test_margins_are_clipped_to_minus_one_one():
  # Rounding can put cosine similarities just past +-1.
  similarity = np.full((6, 6), -1.25, np.float32)
  labels = np.array([0, 0, 0, 1, 1, 1])
  same = labels[:, None] == labels[None, :]
  similarity[same] = np.float32(1.0000002)
  positives, negatives = pair_similarities(similarity, labels)
  assert np.quantile(positives, 0.2) > 1 and np.quantile(negatives, 0.99) < -1
  margins = losses.margins_from_similarity(similarity, labels)
  assert margins == (1.0, -1.0)
  # Margins TCM accepts (checked eagerly, not under jit).
  advanced.tcm_statistics(similarity, labels, margin_pos=margins.margin_pos,
                        margin_neg=margins.margin_neg)
  # Within [-1, 1] the quantiles are left as they are.
  similarity[same] = 0.999
  assert losses.margins_from_similarity(similarity, labels).margin_pos == (
      pytest.approx(float(np.float32(0.999)), abs=ATOL))


def test_bfloat16_and_float64_similarities_match_numpy():
  similarity = _cosine(4, 12)
  labels = np.repeat(np.arange(3), 4)
  low = jnp.asarray(similarity, jnp.bfloat16)
  positives, negatives = pair_similarities(np.asarray(low, np.float64), labels)
  np.testing.assert_allclose(
      losses.margins_from_similarity(low, labels, hard_pos_fraction=0.4,
                                     hard_neg_fraction=0.3),
      reference_margins(positives, negatives, 0.4, 0.3), rtol=0, atol=ATOL)
  with enable_x64(True):
    rng = np.random.default_rng(4)
    wide = rng.uniform(-1, 1, (12, 12))  # float64: four passes of 16 bits
    wide[0, 1:3] = wide[1, 0]  # ties too
    positives, negatives = pair_similarities(wide, labels)
    margins = losses.margins_from_similarity(
        jnp.asarray(wide), labels, hard_pos_fraction=0.4,
        hard_neg_fraction=0.3)
    np.testing.assert_allclose(
        margins, reference_margins(positives, negatives, 0.4, 0.3), rtol=0,
        atol=ATOL)
    # Values 1e-9 apart, which float32 would merge.
    wide = 0.5 + 1e-9 * rng.permutation(144).reshape(12, 12)
    positives, negatives = pair_similarities(wide, labels)
    np.testing.assert_allclose(
        losses.margins_from_similarity(jnp.asarray(wide), labels),
        reference_margins(positives, negatives), rtol=0, atol=ATOL)


def test_applied_margins_give_the_target_hard_fractions_in_tcm():
  """Margins fed to tcm_statistics: tcm_diagnostics reports the targets."""
  rng = np.random.default_rng(5)
  labels = np.repeat(np.arange(32), 4)
  ref_labels = rng.integers(0, 32, 160)
  # Queries against other references: no symmetric duplicates, few ties.
  similarity = _cosine(5, 128, 160, dim=16)
  for hard_pos, hard_neg in [(0.2, 0.01), (0.5, 0.1), (0.05, 0.3)]:
    margins = losses.margins_from_similarity(
        similarity, labels, ref_labels, hard_pos_fraction=hard_pos,
        hard_neg_fraction=hard_neg)
    stats = tcm_statistics(
        similarity, labels, ref_labels, margin_pos=margins.margin_pos,
        margin_neg=margins.margin_neg)
    d = advanced.tcm_diagnostics(stats)
    num_pos, num_neg = float(stats.pos_count), float(stats.neg_count)
    assert abs(float(d['hard_pos_fraction']) - hard_pos) < 1 / num_pos
    assert abs(float(d['hard_neg_fraction']) - hard_neg) < 1 / num_neg
    # The trainer's loss with these margins is positive on both parts.
    assert float(d['tcm_pos']) > 0 and float(d['tcm_neg']) > 0
  # A symmetric matrix counts (i, j) and (j, i), and float32 rounds the
  # margin as tcm_statistics applies it: the guaranteed counts still hold.
  square = _cosine(6, 96, dim=16)
  square_labels = np.repeat(np.arange(24), 4)
  margins = losses.margins_from_similarity(square, square_labels)
  stats = tcm_statistics(square, square_labels, margin_pos=margins.margin_pos,
                         margin_neg=margins.margin_neg)
  positives, negatives = pair_similarities(square, square_labels)
  assert int(stats.pos_count) == len(positives) == 96 * 3
  assert int(stats.hard_pos_count) >= math.floor((len(positives) - 1) * 0.2) + 1
  assert int(stats.hard_neg_count) >= (
      len(negatives) - math.ceil((len(negatives) - 1) * 0.99))
  for values, margin, fraction, side in (
      (positives, margins.margin_pos, 0.2, 'below'),
      (negatives, margins.margin_neg, 0.01, 'above')):
    assert_hard_counts(values, float(np.float32(margin)), fraction, side)


# Fixed shapes (the pair counts vary through the masks): a few compilations.
_SQUARE, _ROWS, _COLS = 14, 9, 13
_FRACTIONS = st.floats(0, 1, exclude_min=True, exclude_max=True)


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    rectangular=st.booleans(),
    num_classes=st.integers(2, 5),
    grid=st.sampled_from([None, 4, 64]),  # None: distinct values; else ties
    hard_pos_fraction=_FRACTIONS,
    hard_neg_fraction=_FRACTIONS,
)
def test_property_quantiles_and_hard_fractions(
    seed, rectangular, num_classes, grid, hard_pos_fraction,
    hard_neg_fraction):
  rng = np.random.default_rng(seed)
  q, r = (_ROWS, _COLS) if rectangular else (_SQUARE, _SQUARE)
  if grid is None:
    similarity = rng.permutation(
        np.linspace(-1, 1, q * r, dtype=np.float32)).reshape(q, r)
  else:
    similarity = (rng.integers(-grid, grid + 1, (q, r)) / grid).astype(
        np.float32)
  labels = rng.integers(0, num_classes, q)
  where = rng.random(q) < 0.8
  kwargs = dict(where=where)
  if rectangular:
    kwargs.update(ref_labels=rng.integers(0, num_classes, r),
                  ref_where=rng.random(r) < 0.8)
  positives, negatives = pair_similarities(similarity, labels, **kwargs)
  hypothesis.assume(len(positives) and len(negatives))
  ref_labels = kwargs.pop('ref_labels', None)
  margins = losses.margins_from_similarity(
      similarity, labels, ref_labels, hard_pos_fraction=hard_pos_fraction,
      hard_neg_fraction=hard_neg_fraction, **kwargs)
  np.testing.assert_allclose(
      margins, reference_margins(positives, negatives, hard_pos_fraction,
                                 hard_neg_fraction), rtol=0, atol=ATOL)
  assert_hard_counts(positives, margins.margin_pos, hard_pos_fraction,
                     'below')
  assert_hard_counts(negatives, margins.margin_neg, hard_neg_fraction,
                     'above')


def test_margins_are_deterministic_and_do_not_depend_on_the_pair_order():
  similarity = _cosine(7, 12)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  perm = np.random.default_rng(7).permutation(12)
  a = losses.margins_from_similarity(similarity, labels, hard_pos_fraction=0.3)
  b = losses.margins_from_similarity(
      similarity[perm][:, perm], labels[perm], hard_pos_fraction=0.3)
  assert a == b


def test_top_level_exports():
  assert tcm_jax.margins_from_similarity is losses.margins_from_similarity
  assert tcm_jax.TCMMargins is losses.TCMMargins
  assert 'margins_from_similarity' in losses.__all__
  assert 'TCMMargins' in tcm_jax.__all__


_S = np.tile(np.linspace(-0.9, 0.9, 6, dtype=np.float32), (6, 1))
_Y = np.array([0, 0, 1, 1, 2, 2])


def _with_nan(i, j):
  s = _S.copy()
  s[i, j] = np.nan
  return s


@pytest.mark.parametrize('kwargs, error, match', [
    *[(dict(hard_pos_fraction=f), ValueError,
       rf'hard_pos_fraction must be a number strictly between 0 and 1, got '
       rf'{m}') for f, m in [(0, '0'), (1, '1'), (0.0, '0.0'), (-0.1, '-0.1'),
                             (1.5, '1.5'), (float('nan'), 'nan'),
                             (float('inf'), 'inf')]],
    *[(dict(hard_neg_fraction=f), ValueError,
       rf'hard_neg_fraction must be a number strictly between 0 and 1, got '
       rf'{m}') for f, m in [(0, '0'), (1.0, '1.0'), (-0.1, '-0.1'),
                             (1.5, '1.5'), (float('nan'), 'nan')]],
    (dict(hard_pos_fraction='0.2'), TypeError,
     r"hard_pos_fraction must be a number, got str '0.2'"),
    (dict(hard_neg_fraction=np.ones(2)), TypeError,
     r'hard_neg_fraction must be a scalar, got ndarray \(2,\)'),
    (dict(labels=np.arange(6)), ValueError,
     r'needs at least one positive pair .* labels, ref_labels, where and '
     r'ref_where give none among the 6 x 6 entries of similarity'),
    # One sample per class once padding is masked out.
    (dict(where=np.array([True, False, True, False, True, False])),
     ValueError, r'needs at least one positive pair'),
    (dict(labels=np.zeros(6, int)), ValueError,
     r'needs at least one negative pair \(query and reference of different '
     r'classes'),
    (dict(similarity=_with_nan(0, 1)), ValueError,
     r'similarity must be finite at the pairs that take part, got 1 '
     r'non-finite value\(s\) among its 30 positive and negative pairs'),
    (dict(similarity=_with_nan(2, 5)), ValueError,
     r'similarity must be finite .* got 1 non-finite'),
    (dict(similarity=np.where(np.eye(6) > 0, _S, np.inf)), ValueError,
     r'got 30 non-finite'),
    (dict(similarity=_S[0]), ValueError,
     r'similarity must be a 2-D .* got shape \(6,\)'),
    (dict(similarity=_S[None]), ValueError,
     r'similarity must be a 2-D .* got shape \(1, 6, 6\)'),
    (dict(similarity=_S.astype(int)), TypeError,
     r'similarity must have a floating dtype'),
    (dict(labels=_Y[:5]), ValueError,
     r'labels must have shape \(6,\) to match the rows of similarity, got '
     r'shape \(5,\)'),
    (dict(labels=_Y.astype(float)), TypeError,
     r'labels must have an integer dtype'),
    (dict(ref_labels=_Y[:4]), ValueError,
     r'ref_labels must have shape \(6,\) to match the columns of similarity, '
     r'got shape \(4,\)'),
    (dict(similarity=_S[:, :5]), ValueError, r'must be square .* \(6, 5\)'),
    (dict(ref_where=np.ones(6, bool)), ValueError,
     r'ref_where must be None when ref_labels is None'),
    (dict(where=np.ones(5, bool)), ValueError,
     r'where must have shape \(6,\), got shape \(5,\)'),
    (dict(where=np.ones(6)), TypeError, r'where must be a boolean mask'),
    (dict(labels=np.array([3_000_000_000] * 3 + [3_000_000_000 + 2**32] * 3)),
     ValueError, r'labels holds class ids in \[3000000000, 7294967296\], '
     r'beyond int32'),
])
def test_bad_input_raises_clear_errors(kwargs, error, match):
  args = dict(similarity=_S, labels=_Y)
  args.update(kwargs)
  similarity, labels = args.pop('similarity'), args.pop('labels')
  with pytest.raises(error, match=match):
    losses.margins_from_similarity(similarity, labels, **args)


def test_non_finite_values_outside_the_pairs_are_fine():
  s = _S.copy()
  np.fill_diagonal(s, -np.inf)  # self pairs
  s[5] = np.nan  # a padded query, and reference
  s[:, 5] = np.nan
  where = np.arange(6) < 5
  margins = losses.margins_from_similarity(s, _Y, where=where)
  positives, negatives = pair_similarities(s, _Y, where=where)
  np.testing.assert_allclose(margins, reference_margins(positives, negatives),
                             rtol=0, atol=ATOL)


def test_traced_input_raises_a_clear_error():
  with pytest.raises(TypeError, match=r'outside jax.jit .* traced similarity'):
    jax.jit(losses.margins_from_similarity)(_S, _Y)
