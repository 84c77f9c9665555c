"""Batches for training and evaluation: grain over a `Split`, decoded and transformed in workers.

Training batches are class-balanced (`ClassBalancedSampler`: P classes x K
samples), and a pure function of (seed, step): every random choice, down to
each image's augmentation, is seeded by the step and the row's position in the
global batch. The iterator's state is therefore just the next step, and a run
resumed from it sees exactly the batches an uninterrupted run would, whatever
the number of workers.

Evaluation batches cover a split once, in fixed-size batches padded at the end,
with a `mask` that is False on the padding.

Both read records and transform them in `num_threads` threads (decoding and
augmentation release the GIL in Pillow and NumPy), and optionally in
`worker_count` separate processes (grain's multiprocessing prefetch).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

from absl import flags
import grain
import numpy as np

from tcm_jax import _checks
from tcm_jax.data.datasets import Split
from tcm_jax.data.sampler import ClassBalancedSampler

_AUGMENTATION_STREAM = 2  # The sampler seeds its streams [seed, 0, ...] and [seed, 1, ...].


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
  """Parallelism of the host-side pipeline.

  Attributes:
    num_threads: threads reading and transforming records (per process);
      each makes whole batches.
    worker_count: separate processes doing the same (0: none, the threads
      run in the training process).
    prefetch: batches prepared ahead of the one being consumed. In the
      threads' path at least `num_threads` (one for each thread to make):
      host memory holds up to `max(prefetch, num_threads)` batches.
  """
  num_threads: int = 8
  worker_count: int = 0
  prefetch: int = 2

  def __post_init__(self):
    for name in ('num_threads', 'worker_count', 'prefetch'):
      low = 1 if name == 'num_threads' else 0
      object.__setattr__(self, name,
                         _checks.check_int(name, getattr(self, name), low))


def _batches(elements: grain.MapDataset, batch_size: int,
             options: LoaderOptions) -> Iterator[dict[str, np.ndarray]]:
  """Batches of consecutive elements, made by threads and optionally processes."""
  if not options.worker_count:
    # Threads each make whole batches, in order. (Threads making the
    # elements of one batch need a buffer of many elements, and grain checks
    # its whole buffer at every element: 1024 elements made an evaluation's
    # loading ~3x slower.)
    prefetch = max(options.prefetch, options.num_threads)
    dataset = elements.batch(batch_size, drop_remainder=True).to_iter_dataset(
        grain.ReadOptions(num_threads=options.num_threads,
                          prefetch_buffer_size=prefetch))
    return iter(dataset)
  # Processes each make whole batches (grain hands worker w every
  # worker_count-th element of what it prefetches: batches, so that each
  # batch stays the same consecutive elements), and return them in order.
  # Grain's workers read absl flags: outside an absl program (tests, Colab)
  # nothing parsed them, and their defaults are what is wanted.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # A worker's threads each make a whole batch; more threads than batches
  # prefetched would idle (and batches can be large).
  prefetch = max(1, options.prefetch)
  read = grain.ReadOptions(num_threads=min(options.num_threads, prefetch),
                           prefetch_buffer_size=prefetch)
  dataset = elements.batch(batch_size, drop_remainder=True).to_iter_dataset(read)
  return iter(dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=options.worker_count)))


class _TrainElement:
  """Element `i` of the stream: row `i % b` of this process's batch `i // b`."""

  def __init__(self, split: Split, sampler: ClassBalancedSampler,
               transform: Callable[[np.ndarray, np.random.Generator], np.ndarray],
               seed: int):
    self.split, self.sampler = split, sampler
    self.transform, self.seed = transform, seed
    self._batches = {}  # step -> rows: the batch is drawn once, not per row

  def _rows(self, step: int) -> np.ndarray:
    rows = self._batches.get(step)
    if rows is None:
      if len(self._batches) >= 16:
        self._batches.clear()
      rows = self._batches[step] = self.sampler.process_batch(step)
    return rows

  def __call__(self, i: int) -> dict[str, Any]:
    b = self.sampler.process_batch_size
    step, row = divmod(int(i), b)
    position = int(self._rows(step)[row])
    global_row = self.sampler.process_index * b + row
    rng = np.random.default_rng(
        [self.seed, _AUGMENTATION_STREAM, step, global_row])
    image = self.transform(self.split.image(position), rng)
    return {'image': image, 'label': np.int32(self.split.labels[position]),
            'index': np.int64(position)}


class TrainBatches:
  """Class-balanced training batches of one process, from a start step on.

  Each batch is this process's rows of the global P x K batch of its step:
  `{'image': float32 [b, h, w, c], 'label': int32 [b], 'index': int64 [b]}`
  (`index`: the record's position in the split). `get_state()` /
  `set_state()` save and restore the position (a JSON-able dict).

  Args:
    split: the training `Split`.
    sampler: a `ClassBalancedSampler` over `split.labels`.
    transform: `transform(image, rng) -> float32 image` (e.g.
      `transforms.TrainTransform`).
    seed: seeds each image's augmentation (with the step and row); default:
      the sampler's seed.
    start_step: the first step produced.
    options: threads and worker processes.

  Examples:
    >>> from tcm_jax.data import datasets, pipeline, sampler, transforms
    >>> train = datasets.load_split('digits', 'train')
    >>> balanced = sampler.ClassBalancedSampler(
    ...     train.labels, classes_per_batch=4, samples_per_class=4)
    >>> batches = pipeline.TrainBatches(
    ...     train, balanced, transforms.SmallTrainTransform(size=16))
    >>> batch = next(batches)
    >>> batch['image'].shape, batch['label'].shape, batches.get_state()
    ((16, 16, 16, 3), (16,), {'step': 1})
  """

  def __init__(self, split: Split, sampler: ClassBalancedSampler,
               transform: Callable[[np.ndarray, np.random.Generator], np.ndarray],
               *, seed: int | None = None, start_step: int = 0,
               options: LoaderOptions = LoaderOptions()):
    if len(sampler_labels := sampler.labels) != len(split) or not np.array_equal(
        sampler_labels, split.labels):
      raise ValueError(
          f'sampler was built over {len(sampler_labels)} labels that are not '
          f'those of split {split.name!r} ({len(split)} records); build it '
          f'from split.labels.')
    self._element = _TrainElement(
        split, sampler, transform, sampler.seed if seed is None else seed)
    self._batch_size = sampler.process_batch_size
    self._options = options
    self.set_state({'step': _checks.check_int('start_step', start_step, 0)})

  def set_state(self, state: dict[str, int]) -> None:
    if not isinstance(state, dict) or 'step' not in state:
      raise ValueError(f"state must be {{'step': int >= 0}}, got {state!r}.")
    self._step = _checks.check_int("state['step']", state['step'], 0)
    self._iterator = None  # Rebuilt lazily from the step.

  def get_state(self) -> dict[str, int]:
    return {'step': self._step}

  def __iter__(self) -> TrainBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      b = self._batch_size
      # An unbounded stream in practice: 2**40 elements from the start step.
      elements = grain.MapDataset.range(
          self._step * b, self._step * b + 2**40).map(self._element)
      self._iterator = _batches(elements, b, self._options)
    batch = next(self._iterator)
    self._step += 1
    return batch


class _EvalElement:
  """Element `i`: row `i % b` of this process's part of global batch `i // b`."""

  def __init__(self, split: Split, transform: Callable[[np.ndarray], np.ndarray],
               batch_size: int, num_processes: int, process_index: int):
    self.split, self.transform = split, transform
    self.batch_size, self.process_index = batch_size, process_index
    self.per_process = batch_size // num_processes

  @functools.cached_property
  def _padding(self) -> np.ndarray:
    return np.zeros_like(self.transform(self.split.image(0)))

  def __call__(self, i: int) -> dict[str, Any]:
    step, row = divmod(int(i), self.per_process)
    position = (step * self.batch_size + self.process_index * self.per_process
                + row)
    if position < len(self.split):
      return {'image': self.transform(self.split.image(position)),
              'label': np.int32(self.split.labels[position]),
              'index': np.int64(position), 'mask': np.True_}
    return {'image': self._padding, 'label': np.int32(-1),
            'index': np.int64(-1), 'mask': np.False_}


def eval_batches(split: Split, transform: Callable[[np.ndarray], np.ndarray],
                 *, batch_size: int, num_processes: int = 1,
                 process_index: int = 0, num_devices: int | None = None,
                 options: LoaderOptions = LoaderOptions()
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every record of `split` once, in global batches of `batch_size`, padded.

  Global batch `j` holds records `j * batch_size` onwards; this process gets
  its contiguous `batch_size / num_processes` rows of it. The last global batch
  is padded with zero images, label -1, index -1 and `mask` False, so every
  batch has the same shape (one compilation) and every record is embedded
  exactly once.

  `num_devices` (all processes' devices; default one per process) must
  divide the batch, which is sharded over them.

  Yields:
    `{'image', 'label', 'index', 'mask'}` arrays with leading dimension
    `batch_size // num_processes`.

  Raises:
    ValueError: `batch_size` not divisible by `num_processes` or
      `num_devices`, or an empty split.

  Examples:
    >>> from tcm_jax.data import datasets, pipeline, transforms
    >>> test = datasets.load_split('digits', 'test')
    >>> batches = list(pipeline.eval_batches(
    ...     test, transforms.SmallEvalTransform(size=8), batch_size=100))
    >>> len(batches), int(sum(b['mask'].sum() for b in batches)), len(test)
    (9, 896, 896)
  """
  batch_size = _checks.check_int('batch_size', batch_size, 1)
  num_processes = _checks.check_int('num_processes', num_processes, 1)
  num_devices = (num_processes if num_devices is None
                 else _checks.check_int('num_devices', num_devices, 1))
  if num_devices % num_processes:
    raise ValueError(f'num_devices ({num_devices}) must be a multiple of '
                     f'num_processes ({num_processes}).')
  for name, count in (('num_processes', num_processes),
                      ('num_devices', num_devices)):
    if batch_size % count:
      raise ValueError(
          f'batch_size ({batch_size}) must be divisible by {name} ({count}).')
  process_index = _checks.check_index('process_index', process_index,
                                      num_processes)
  if not len(split):
    raise ValueError(f'split {split.name!r} is empty.')
  num_batches = -(-len(split) // batch_size)
  per_process = batch_size // num_processes
  element = _EvalElement(split, transform, batch_size, num_processes,
                         process_index)
  elements = grain.MapDataset.range(num_batches * per_process).map(element)
  return _batches(elements, per_process, options)
