"""Training and evaluation batches: balanced, deterministic, resumable, complete."""

import re

import numpy as np
import pytest

from tcm_jax.data import datasets
from tcm_jax.data import pipeline
from tcm_jax.data import transforms
from tcm_jax.data.sampler import ClassBalancedSampler

THREADS = pipeline.LoaderOptions(num_threads=2)


@pytest.fixture(scope='module')
def digits_train():
  return datasets.load_split('digits', 'train')


def _train(split, *, seed=0, start_step=0, options=THREADS, **kwargs):
  sampler = ClassBalancedSampler(split.labels, classes_per_batch=4,
                                 samples_per_class=3, seed=seed, **kwargs)
  return pipeline.TrainBatches(split, sampler,
                               transforms.SmallTrainTransform(size=16),
                               seed=seed, start_step=start_step,
                               options=options)


def test_training_batches_follow_the_sampler(digits_train):
  batches = _train(digits_train)
  sampler = ClassBalancedSampler(digits_train.labels, classes_per_batch=4,
                                 samples_per_class=3)
  for step in range(3):
    batch = next(batches)
    assert batch['image'].shape == (12, 16, 16, 3)
    assert batch['image'].dtype == np.float32
    np.testing.assert_array_equal(batch['index'], sampler.global_batch(step))
    np.testing.assert_array_equal(batch['label'],
                                  digits_train.labels[batch['index']])
    assert len(set(batch['label'])) == 4
  assert batches.get_state() == {'step': 3}


def test_restored_iterator_continues_identically(digits_train):
  uninterrupted = [next(b) for b in [_train(digits_train)] for _ in range(5)]
  first = _train(digits_train)
  for _ in range(2):
    next(first)
  state = first.get_state()
  resumed = _train(digits_train, options=pipeline.LoaderOptions(num_threads=3))
  resumed.set_state(state)
  for expected in uninterrupted[2:]:
    batch = next(resumed)
    for key in ('image', 'label', 'index'):
      np.testing.assert_array_equal(batch[key], expected[key])


def test_seed_changes_the_stream(digits_train):
  a, b = next(_train(digits_train, seed=0)), next(_train(digits_train, seed=1))
  assert not np.array_equal(a['index'], b['index'])


def test_processes_share_one_global_batch(digits_train):
  whole = next(_train(digits_train))
  parts = [next(_train(digits_train, num_processes=2, process_index=i,
                       num_devices=2)) for i in (0, 1)]
  for key in ('image', 'label', 'index'):
    np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), whole[key])


def test_worker_processes_give_the_same_batches(digits_train):
  threads = _train(digits_train)
  workers = _train(digits_train,
                   options=pipeline.LoaderOptions(num_threads=1, worker_count=2))
  workers.set_state({'step': 3})  # resumed, in worker processes
  for _ in range(3):
    next(threads)
  for _ in range(2):
    a, b = next(threads), next(workers)
    for key in ('image', 'label', 'index'):
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize('batch_size, num_processes', [(64, 1), (100, 2),
                                                       (896, 1), (1000, 4)])
def test_eval_batches_cover_every_record_once(batch_size, num_processes):
  split = datasets.load_split('digits', 'test')  # 896 records
  transform = transforms.SmallEvalTransform(size=8)
  per_process = [list(pipeline.eval_batches(
      split, transform, batch_size=batch_size, num_processes=num_processes,
      process_index=p, options=THREADS)) for p in range(num_processes)]
  num_batches = -(-len(split) // batch_size)
  assert all(len(batches) == num_batches for batches in per_process)
  seen = []
  for step in range(num_batches):
    for batches in per_process:
      batch = batches[step]
      assert batch['image'].shape == (batch_size // num_processes, 8, 8, 3)
      valid = batch['mask']
      np.testing.assert_array_equal(valid, batch['index'] >= 0)
      np.testing.assert_array_equal(batch['label'][valid],
                                    split.labels[batch['index'][valid]])
      assert np.all(batch['image'][~valid] == 0)
      np.testing.assert_array_equal(
          batch['image'][valid][0], transform(split.image(batch['index'][valid][0])))
      seen.extend(batch['index'][valid])
  np.testing.assert_array_equal(seen, np.arange(len(split)))  # once, in order


class TestBadInput:

  def test_batch_that_does_not_divide_over_processes(self):
    split = datasets.load_split('digits', 'test')
    with pytest.raises(ValueError,
                       match=r'batch_size \(10\) must be divisible by '
                             r'num_processes \(4\)'):
      pipeline.eval_batches(split, transforms.SmallEvalTransform(size=8),
                            batch_size=10, num_processes=4)

  @pytest.mark.parametrize('kwargs, message', [
      (dict(num_processes=0), r'num_processes must be an integer >= 1, got 0\.'),
      (dict(num_devices=3, num_processes=2),
       r'num_devices \(3\) must be a multiple of num_processes \(2\)'),
  ])
  def test_bad_process_and_device_counts(self, kwargs, message):
    split = datasets.load_split('digits', 'test')
    with pytest.raises(ValueError, match=message):
      pipeline.eval_batches(split, transforms.SmallEvalTransform(size=8),
                            batch_size=12, **kwargs)

  def test_sampler_of_another_split(self, digits_train):
    test = datasets.load_split('digits', 'test')
    sampler = ClassBalancedSampler(test.labels, classes_per_batch=2,
                                   samples_per_class=2)
    with pytest.raises(ValueError, match="not those of split 'digits/train'"):
      pipeline.TrainBatches(digits_train, sampler,
                            transforms.SmallTrainTransform(size=8))

  def test_bad_state(self, digits_train):
    with pytest.raises(ValueError,
                       match=r"state\['step'\] must be an integer >= 0, got -1"):
      _train(digits_train).set_state({'step': -1})
    with pytest.raises(ValueError, match=r"state must be \{'step'"):
      _train(digits_train).set_state({'epoch': 1})

  def test_bad_options(self):
    with pytest.raises(ValueError, match='worker_count must be an integer >= 0, got -1'):
      pipeline.LoaderOptions(worker_count=-1)

  @pytest.mark.parametrize('kwargs, message', [
      # True was once taken for 1 thread; a float was refused already.
      (dict(num_threads=True), 'num_threads must be an integer >= 1, got True.'),
      (dict(prefetch=2.0), 'prefetch must be an integer >= 0, got 2.0.'),
  ])
  def test_options_refuse_bools_and_floats(self, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
      pipeline.LoaderOptions(**kwargs)

  def test_options_take_numpy_integers_as_ints(self):
    options = pipeline.LoaderOptions(num_threads=np.int64(2))
    assert options.num_threads == 2 and type(options.num_threads) is int

  def test_state_step_must_be_an_int(self, digits_train):
    with pytest.raises(ValueError, match=re.escape(
        "state['step'] must be an integer >= 0, got True.")):
      _train(digits_train).set_state({'step': True})
    with pytest.raises(ValueError, match=re.escape(
        'start_step must be an integer >= 0, got -1.')):
      _train(digits_train, start_step=-1)

  @pytest.mark.parametrize('process_index, message', [
      (2, 'process_index must be an integer in [0, 2), got 2.'),
      # once let through (0 <= 0.5 < 2) and made fractional positions
      (0.5, 'process_index must be an integer in [0, 2), got 0.5.'),
      (True, 'process_index must be an integer in [0, 2), got True.'),
  ])
  def test_bad_process_index(self, process_index, message):
    split = datasets.load_split('digits', 'test')
    with pytest.raises(ValueError, match=re.escape(message)):
      pipeline.eval_batches(split, transforms.SmallEvalTransform(size=8),
                            batch_size=12, num_processes=2,
                            process_index=process_index)
