"""The mergeable accumulator: blocks updated and merged in any order equal
the one-call functions on all their queries, and a NumPy reference."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from tcm_jax import metrics
from tcm_jax.metrics import PairAccumulator
from tests.metrics import reference
from tests.metrics.conftest import clustered_set, cosine


@pytest.fixture(scope='module')
def gallery_and_queries():
  z, labels = clustered_set(0, [12] * 10 + [1, 3], dim=8)
  return z[:80], labels[:80], z[80:], labels[80:]


def _state_of(blocks, order, merge_tree):
  """Blocks updated one by one into states, then merged in `order`, either
  as a chain or pairwise (a tree, as hosts would)."""
  states = [PairAccumulator.empty().update(*block) for block in blocks]
  states = [states[i] for i in order]
  if not merge_tree:
    out = PairAccumulator.empty()
    for state in states:
      out = state.merge(out)
    return out
  while len(states) > 1:
    states = [states[i].merge(states[i + 1]) if i + 1 < len(states)
              else states[i] for i in range(0, len(states), 2)]
  return states[0]


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(cuts=st.lists(st.integers(1, 39), min_size=1, max_size=4,
                                unique=True),
                  seed=st.integers(0, 100), merge_tree=st.booleans())
def test_blocks_merged_in_any_order_equal_one_call(gallery_and_queries,
                                                   cuts, seed, merge_tree):
  queries, labels, gallery, gallery_labels = gallery_and_queries
  edges = [0, *sorted(cuts), len(labels)]
  blocks = [(queries[a:b], labels[a:b], gallery, gallery_labels)
            for a, b in zip(edges[:-1], edges[1:])]
  order = np.random.default_rng(seed).permutation(len(blocks))
  state = _state_of(blocks, order, merge_tree)
  whole = PairAccumulator.empty().update(queries, labels, gallery,
                                         gallery_labels)
  np.testing.assert_array_equal(state.classes, whole.classes)
  np.testing.assert_array_equal(state.positive, whole.positive)
  np.testing.assert_array_equal(state.negative, whole.negative)


def test_compute_equals_the_one_call_functions(gallery_and_queries):
  queries, labels, gallery, gallery_labels = gallery_and_queries
  state = PairAccumulator.empty()
  for rows in (slice(0, 13), slice(13, 40), slice(40, None)):
    state = state.update(queries[rows], labels[rows], gallery,
                         gallery_labels)
  got = state.compute(target_far=0.05, fars=(0.01, 0.1))
  one = metrics.evaluate_embeddings(queries, labels, gallery, gallery_labels,
                                    engine='histogram', target_far=0.05)
  np.testing.assert_array_equal(got.curves.classes, one.curves.classes)
  np.testing.assert_array_equal(got.curves.thresholds, one.curves.thresholds)
  np.testing.assert_allclose(got.curves.utility, one.curves.utility,
                             atol=1e-6)
  assert got.opis == pytest.approx(one.opis, abs=1e-6)
  assert got.eps_opis == pytest.approx(one.eps_opis, abs=1e-6)
  assert got.operating_points.calibration.threshold == (
      one.calibration.threshold)
  points = metrics.operating_points(queries, labels, gallery, gallery_labels,
                                    target_far=0.05, fars=(0.01, 0.1))
  assert got.operating_points.to_dict() == points.to_dict()
  # And the rates from a NumPy reference on the full matrix.
  classes, tpr, _ = reference.class_rates(
      cosine(queries, gallery), labels, gallery_labels,
      got.curves.thresholds)
  np.testing.assert_array_equal(classes, got.curves.classes)
  np.testing.assert_allclose(got.curves.tpr, tpr, atol=1e-3)


def test_states_of_different_classes_merge_by_label():
  z, labels = clustered_set(1, [6] * 6, dim=6)
  first, second = labels < 3, labels >= 3
  one = PairAccumulator.empty().update(z[first], labels[first], z, labels)
  two = PairAccumulator.empty().update(z[second], labels[second], z, labels)
  # Each block's rows are those of its queries' classes.
  assert one.classes.tolist() == [0, 1, 2]
  assert two.classes.tolist() == [3, 4, 5]
  merged = two.merge(one)
  np.testing.assert_array_equal(merged.classes, np.arange(6))
  both = PairAccumulator.empty().update(z, labels, z, labels)
  np.testing.assert_array_equal(merged.negative, both.negative)
  np.testing.assert_array_equal(merged.positive, both.positive)
  lone = PairAccumulator.empty().update(z[labels == 5], labels[labels == 5],
                                        z[labels != 0], labels[labels != 0])
  assert lone.classes.tolist() == [5]
  mixed = lone.merge(one)
  assert mixed.classes.tolist() == [0, 1, 2, 5]
  np.testing.assert_array_equal(mixed.negative[3], lone.negative[0])
  np.testing.assert_array_equal(mixed.negative[:3], one.negative)
  # A state within the other's classes, either way round.
  again = merged.merge(lone)
  np.testing.assert_array_equal(again.classes, merged.classes)
  np.testing.assert_array_equal(again.negative[5],
                                merged.negative[5] + lone.negative[0])
  np.testing.assert_array_equal(lone.merge(merged).negative, again.negative)


def test_a_block_without_references_is_leave_one_out_within_it():
  z, labels = clustered_set(2, [8] * 8, dim=6)
  state = PairAccumulator.empty().update(z, labels)
  points = metrics.operating_points(z, labels)
  assert state.compute().operating_points.to_dict() == points.to_dict()
  assert int(state.positive.sum()) == 8 * 8 * 7


def test_the_empty_state_and_bad_input():
  empty = PairAccumulator.empty()
  assert empty.classes.shape == (0,) and empty.positive.sum() == 0
  z, labels = clustered_set(3, [5] * 4, dim=4)
  state = empty.update(z, labels)
  assert state.merge(empty).classes.tolist() == state.classes.tolist()
  with pytest.raises(ValueError, match='at least two classes'):
    empty.compute()
  with pytest.raises(TypeError, match='merge takes another PairAccumulator'):
    state.merge(state.histograms())
  with pytest.raises(ValueError, match='epsilon'):
    state.compute(epsilon=1.5)
  with pytest.raises(ValueError, match='fars'):
    state.compute(fars=(0.0,))
  with pytest.raises(ValueError, match='ref_embeddings'):
    state.update(z, labels, z[:, :2], labels)
