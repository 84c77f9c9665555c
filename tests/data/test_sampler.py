"""ClassBalancedSampler: P x K structure, epochs, determinism and sharding.

Expectations are read off the labels of the returned record indices, never
from the sampler's own notion of classes.
"""

import collections
import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from tcm_jax.data.sampler import ClassBalancedSampler


def _labels(sizes, values=None, seed=0):
  """Shuffled labels: `sizes[i]` records of class `values[i]`."""
  values = np.arange(len(sizes)) if values is None else np.asarray(values)
  return np.random.default_rng(seed).permutation(np.repeat(values, sizes))


def _check_batch(labels, batch, p, k):
  """Checks the P x K structure of a batch; returns its slots' classes."""
  assert batch.shape == (p * k,)
  assert np.issubdtype(batch.dtype, np.integer)
  assert np.all((batch >= 0) & (batch < len(labels)))
  rows = labels[batch].reshape(p, k)
  assert np.all(rows == rows[:, :1]), 'a slot mixes classes'
  classes = rows[:, 0]
  assert len(set(classes.tolist())) == p, 'a class fills two slots'
  sizes = collections.Counter(labels.tolist())
  for records, c in zip(batch.reshape(p, k), classes.tolist()):
    n = sizes[c]
    uses = collections.Counter(records.tolist())
    if n >= k:
      assert len(uses) == k, 'repeated record in a class with >= K records'
    else:
      # Every record of a small class, each K // n or K // n + 1 times.
      assert len(uses) == n
      assert set(uses.values()) <= {k // n, k // n + 1}
  return classes


def _epoch_classes(sampler, labels, epoch, p, k):
  steps = math.ceil(len(np.unique(labels)) / p)
  return np.concatenate([
      _check_batch(labels, sampler.global_batch(epoch * steps + j), p, k)
      for j in range(steps)])


def _stream(sampler, steps):
  return np.stack([sampler.global_batch(t) for t in steps])


@pytest.mark.parametrize('sizes, p, k', [
    ([5, 6, 7, 8, 9], 2, 3),
    ([4] * 12, 4, 4),
    ([2, 10, 3, 10], 3, 5),
    ([20], 1, 20),
])
def test_batches_are_p_distinct_classes_of_k_records(sizes, p, k):
  labels = _labels(sizes, values=np.arange(len(sizes)) * 7 - 10)
  sampler = ClassBalancedSampler(labels, classes_per_batch=p,
                                 samples_per_class=k, seed=4)
  assert sampler.batch_size == sampler.process_batch_size == p * k
  assert sampler.num_classes == len(sizes)
  for step in range(25):
    _check_batch(labels, sampler.global_batch(step), p, k)


@pytest.mark.parametrize('num_classes, p', [
    (10, 3), (12, 3), (13, 5), (7, 7), (5, 1), (9, 8)])
def test_no_class_repeats_within_an_epoch(num_classes, p):
  values = np.arange(num_classes) * 3 - 5
  labels = _labels([4] * num_classes, values=values)
  sampler = ClassBalancedSampler(labels, classes_per_batch=p,
                                 samples_per_class=2, seed=3)
  steps = math.ceil(num_classes / p)
  assert sampler.steps_per_epoch == steps
  assert [sampler.epoch(t) for t in range(3 * steps)] == [
      t // steps for t in range(3 * steps)]
  orders = []
  for epoch in range(5):
    slots = _epoch_classes(sampler, labels, epoch, p, 2)
    assert len(slots) == steps * p
    # Every class drawn before any is drawn twice.
    assert sorted(slots[:num_classes].tolist()) == values.tolist()
    orders.append(tuple(slots[:num_classes].tolist()))
  if num_classes >= 5:
    assert len(set(orders)) > 1, 'every epoch walks the classes in one order'


def test_the_last_batch_of_an_epoch_is_completed_from_drawn_classes():
  labels = _labels([3] * 7)
  sampler = ClassBalancedSampler(labels, classes_per_batch=3,
                                 samples_per_class=3, seed=8)
  fillers, first_batch_reused = set(), 0
  for epoch in range(30):
    slots = _epoch_classes(sampler, labels, epoch, 3, 3)
    # Slot 6 holds the 7th class; slots 7 and 8 complete the batch.
    fillers.update(slots[7:].tolist())
    first_batch_reused += set(slots[7:]) <= set(slots[:3])
  # The completing classes are drawn at random: not always the same ones,
  # nor simply the epoch's first classes again.
  assert fillers == set(range(7))
  assert first_batch_reused < 30


def test_same_seed_same_stream_different_seed_different():
  labels = _labels([3, 8, 5, 9, 4, 6, 7])

  def stream(seed):
    return _stream(ClassBalancedSampler(labels, classes_per_batch=3,
                                        samples_per_class=3, seed=seed),
                   range(40))

  np.testing.assert_array_equal(stream(5), stream(5))
  assert not np.array_equal(stream(5), stream(6))
  # Different seeds order the classes differently, and pick other records
  # even where the classes are the same.
  assert not np.array_equal(labels[stream(5)], labels[stream(6)])
  one_class = [ClassBalancedSampler(np.zeros(20, int), classes_per_batch=1,
                                    samples_per_class=5, seed=seed)
               for seed in (5, 6)]
  assert not np.array_equal(*(_stream(s, range(10)) for s in one_class))


def test_random_access_and_resumption_match_the_uninterrupted_stream():
  labels = _labels([3, 8, 5, 9, 4, 6, 7, 5, 5, 6, 3])

  def make():
    return ClassBalancedSampler(labels, classes_per_batch=4,
                                samples_per_class=3, seed=11)

  uninterrupted = _stream(make(), range(60))
  shuffled = np.random.default_rng(0).permutation(60)
  np.testing.assert_array_equal(_stream(make(), shuffled),
                                uninterrupted[shuffled])
  # A run restored at step 23 only knows the step number.
  np.testing.assert_array_equal(_stream(make(), range(23, 60)),
                                uninterrupted[23:])
  # Interleaving far-apart epochs gives the same batches as visiting once.
  sampler = make()
  far = 10**9 + 5
  first = sampler.global_batch(far)
  sampler.global_batch(1)
  np.testing.assert_array_equal(sampler.global_batch(far), first)
  np.testing.assert_array_equal(make().global_batch(far), first)


def test_small_classes_are_counted_and_sampled_with_replacement():
  values, sizes = [40, 10, 30, 20, 50], [1, 2, 3, 8, 9]
  labels = _labels(sizes, values=values)
  sampler = ClassBalancedSampler(labels, classes_per_batch=2,
                                 samples_per_class=5, seed=1)
  np.testing.assert_array_equal(sampler.small_classes, [10, 30, 40])
  assert sampler.num_small_classes == 3
  seen = collections.Counter()
  for step in range(40):
    seen.update(_check_batch(labels, sampler.global_batch(step), 2, 5).tolist())
  # Small classes take part like the others: at least once per epoch, and
  # steps 0 to 38 are 13 whole epochs of 3 steps.
  assert set(seen) == set(values) and min(seen.values()) >= 13
  large = ClassBalancedSampler(labels, classes_per_batch=2, samples_per_class=1)
  assert large.num_small_classes == 0 and large.small_classes.size == 0


@pytest.mark.parametrize('num_processes, num_devices', [
    (2, 2), (2, 8), (4, 4), (4, 8)])
def test_process_slices_partition_the_global_batch(num_processes, num_devices):
  labels = _labels([6, 7, 8, 9, 10, 11])
  kwargs = dict(classes_per_batch=4, samples_per_class=4, seed=2)
  reference = ClassBalancedSampler(labels, **kwargs)
  processes = [
      ClassBalancedSampler(labels, num_processes=num_processes,
                           process_index=i, num_devices=num_devices, **kwargs)
      for i in range(num_processes)]
  size = 16 // num_processes
  for step in (0, 1, 7, 31):
    parts = [s.process_batch(step) for s in processes]
    assert [len(part) for part in parts] == [size] * num_processes
    assert all(s.process_batch_size == size for s in processes)
    # Contiguous position ranges, in process order, tile the global batch.
    np.testing.assert_array_equal(np.concatenate(parts),
                                  reference.global_batch(step))
    # Every class has >= K records, so the global batch has no repeated
    # record and the processes share none.
    records = [set(part.tolist()) for part in parts]
    assert sum(map(len, records)) == 16 == len(set().union(*records))


_GOOD = dict(classes_per_batch=2, samples_per_class=2)
_SIZES = [6, 2, 3, 4]  # four classes, the largest with 6 records


@pytest.mark.parametrize('labels, kwargs, match', [
    (np.zeros((2, 3), int), _GOOD, r'labels must be a 1-D integer.*\(2, 3\)'),
    (np.zeros(4), _GOOD, r'labels must be a 1-D integer.*float64'),
    (np.ones(4, bool), _GOOD, r'labels must be a 1-D integer.*bool'),
    (np.zeros(0, int), _GOOD, r'labels must hold at least one record, got 0'),
    (None, dict(_GOOD, classes_per_batch=0),
     r'classes_per_batch must be an integer >= 1, got 0'),
    (None, dict(_GOOD, classes_per_batch=1.5),
     r'classes_per_batch must be an integer >= 1, got 1.5'),
    (None, dict(_GOOD, samples_per_class=-1),
     r'samples_per_class must be an integer >= 1, got -1'),
    (None, dict(_GOOD, classes_per_batch=5),
     r'classes_per_batch must be at most the number of classes, 4, got 5'),
    (None, dict(_GOOD, samples_per_class=7),
     r'samples_per_class must be at most the largest class size, 6, got 7'),
    (None, dict(classes_per_batch=3, samples_per_class=1, num_processes=2),
     r'samples_per_class = 3 must be divisible by num_processes, got 2'),
    (None, dict(classes_per_batch=3, samples_per_class=2, num_devices=4),
     r'samples_per_class = 6 must be divisible by num_devices, got 4'),
    (None, dict(_GOOD, num_processes=2, process_index=2),
     r'process_index must be .*\[0, 2\), got 2'),
    (None, dict(_GOOD, num_processes=2, process_index=-1),
     r'process_index must be .*\[0, 2\), got -1'),
    (None, dict(_GOOD, num_processes=2, num_devices=3),
     r'num_devices must be a multiple of num_processes, 2, got 3'),
    (None, dict(_GOOD, num_processes=0),
     r'num_processes must be an integer >= 1, got 0'),
    (None, dict(_GOOD, seed=-3), r'seed must be an integer >= 0, got -3'),
])
def test_bad_arguments_raise(labels, kwargs, match):
  labels = _labels(_SIZES) if labels is None else labels
  with pytest.raises(ValueError, match=match):
    ClassBalancedSampler(labels, **kwargs)


def test_samples_per_class_above_some_class_sizes_is_accepted():
  sampler = ClassBalancedSampler(_labels(_SIZES), classes_per_batch=2,
                                 samples_per_class=6)
  np.testing.assert_array_equal(sampler.small_classes, [1, 2, 3])


@pytest.mark.parametrize('method', [
    'global_batch', 'process_batch', 'batch_classes', 'epoch'])
@pytest.mark.parametrize('step, match', [
    (-1, r'step must be an integer >= 0, got -1'),
    (2.0, r'step must be an integer >= 0, got 2.0')])
def test_bad_steps_raise(method, step, match):
  sampler = ClassBalancedSampler(_labels(_SIZES), **_GOOD)
  with pytest.raises(ValueError, match=match):
    getattr(sampler, method)(step)


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(data=st.data())
def test_random_labels_give_balanced_epochs(data):
  dtype = data.draw(st.sampled_from([np.int8, np.int32, np.int64]))
  labels = np.array(data.draw(st.lists(st.integers(-4, 12), min_size=1,
                                       max_size=60)), dtype)
  values, sizes = np.unique(labels, return_counts=True)
  p = data.draw(st.integers(1, len(values)))
  k = data.draw(st.integers(1, int(sizes.max())))
  seed = data.draw(st.integers(0, 2**40))
  epoch = data.draw(st.integers(0, 1000))
  sampler = ClassBalancedSampler(labels, classes_per_batch=p,
                                 samples_per_class=k, seed=seed)
  np.testing.assert_array_equal(sampler.small_classes, values[sizes < k])
  slots = _epoch_classes(sampler, labels, epoch, p, k)
  assert sorted(slots[:len(values)].tolist()) == values.tolist()
  assert set(slots.tolist()) == set(values.tolist())
