"""Class-balanced P x K batches for deep metric learning, by random access.

A global batch holds `P = classes_per_batch` distinct classes with
`K = samples_per_class` records each, in class-major order. The batch at a
step is a pure function of (labels, P, K, seed, step): the sampler keeps no
iteration state, so a run's data position is its step number and a resumed
run sees the same batches as an uninterrupted one.

Classes are drawn epoch by epoch without repetition: epoch `e` walks a
permutation of the classes seeded by `(seed, e)`, `P` classes a step. When the
number of classes is not a multiple of `P`, the epoch's last batch completes
its remaining classes with distinct classes already drawn in that epoch.

Every process computes the same global batch and keeps its own contiguous
slice of rows, so the processes need not communicate to agree on a batch.
"""

from __future__ import annotations

import math

import numpy as np

from tcm_jax import _checks

# Leading words of the seed entropy, one per kind of draw. numpy's
# SeedSequence pads short entropy with zeros, so `[seed, e]` and
# `[seed, e, 0]` would seed the same stream; a distinct tag per kind keeps the
# class permutations and the record draws independent.
_EPOCH_STREAM = 0
_RECORD_STREAM = 1


class ClassBalancedSampler:
  """P x K batches of record indices: P distinct classes, K records each.

  Within a batch, a class with at least K records gives K distinct records.
  A class with fewer than K records (see `small_classes`) is sampled with
  replacement, as evenly as possible: each of its n records appears
  `K // n` or `K // n + 1` times.

  Args:
    labels: `[records]` integer label of each record; a record's index is its
      position. The classes are the distinct values.
    classes_per_batch: P, the number of distinct classes in a global batch.
    samples_per_class: K, the number of records of each class in a batch.
    seed: non-negative integer seeding every draw.
    num_processes: number of host processes sharing the global batch.
    process_index: this process's index in `[0, num_processes)`.
    num_devices: total number of devices over all processes; the global batch
      is split evenly over them.

  Raises:
    ValueError: when labels are not a non-empty 1-D integer array; when P or
      K is below 1, P exceeds the number of classes or K exceeds every class
      size; when the global batch does not divide over the processes or the
      devices, `num_devices` is not a multiple of `num_processes`, or
      `process_index` is out of range.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data.sampler import ClassBalancedSampler
    >>> labels = np.array([7, 7, 7, 3, 3, 3, 5, 5, 5, 9, 9, 1])
    >>> sampler = ClassBalancedSampler(labels, classes_per_batch=2,
    ...                                samples_per_class=3)
    >>> sampler.batch_size, sampler.num_classes, sampler.steps_per_epoch
    (6, 5, 3)
    >>> sampler.small_classes
    array([1, 9])
    >>> batch = sampler.global_batch(0)
    >>> rows = labels[batch].reshape(2, 3)
    >>> bool(np.all(rows == rows[:, :1])), len(set(rows[:, 0]))
    (True, 2)
    >>> np.array_equal(batch, sampler.global_batch(0))
    True
  """

  def __init__(self, labels, *, classes_per_batch: int, samples_per_class: int,
               seed: int = 0, num_processes: int = 1, process_index: int = 0,
               num_devices: int = 1):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
          'labels must be a 1-D integer array, got shape '
          f'{labels.shape} and dtype {labels.dtype}.')
    if labels.size == 0:
      raise ValueError('labels must hold at least one record, got 0.')
    p = _checks.check_int('classes_per_batch', classes_per_batch, 1)
    k = _checks.check_int('samples_per_class', samples_per_class, 1)
    self._seed = _checks.check_int('seed', seed, 0)
    num_processes = _checks.check_int('num_processes', num_processes, 1)
    num_devices = _checks.check_int('num_devices', num_devices, 1)

    self._order = np.argsort(labels, kind='stable')
    self._classes, self._counts = np.unique(labels, return_counts=True)
    # Class c's records are self._order[self._starts[c]:][:self._counts[c]].
    self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
    num_classes = len(self._classes)
    if p > num_classes:
      raise ValueError(
          'classes_per_batch must be at most the number of classes, '
          f'{num_classes}, got {p}.')
    largest = int(self._counts.max())
    if k > largest:
      raise ValueError(
          'samples_per_class must be at most the largest class size, '
          f'{largest}, got {k}.')
    batch_size = p * k
    if batch_size % num_processes:
      raise ValueError(
          'the global batch size classes_per_batch * samples_per_class = '
          f'{batch_size} must be divisible by num_processes, got '
          f'{num_processes}.')
    process_index = _checks.check_index(
        'process_index', process_index, num_processes,
        expected=f'an integer in [0, num_processes) = [0, {num_processes})')
    if num_devices % num_processes:
      raise ValueError(
          f'num_devices must be a multiple of num_processes, {num_processes}, '
          f'got {num_devices}.')
    if batch_size % num_devices:
      raise ValueError(
          'the global batch size classes_per_batch * samples_per_class = '
          f'{batch_size} must be divisible by num_devices, got {num_devices}.')

    self._labels = labels
    self._p, self._k = p, k
    self._num_processes = num_processes
    self._process_index = process_index
    self._steps_per_epoch = math.ceil(num_classes / p)
    self._epoch_cache: tuple[int, np.ndarray] | None = None

  @property
  def labels(self) -> np.ndarray:
    """The label of each record, as given."""
    return self._labels

  @property
  def seed(self) -> int:
    """The seed of the class order and of the records drawn."""
    return self._seed

  @property
  def process_index(self) -> int:
    """This process's index in `[0, num_processes)`."""
    return self._process_index

  @property
  def num_processes(self) -> int:
    """Processes sharing each global batch."""
    return self._num_processes

  @property
  def batch_size(self) -> int:
    """Records in a global batch, P * K."""
    return self._p * self._k

  @property
  def process_batch_size(self) -> int:
    """Records in this process's slice of the global batch."""
    return self.batch_size // self._num_processes

  @property
  def num_classes(self) -> int:
    """Number of distinct labels."""
    return len(self._classes)

  @property
  def steps_per_epoch(self) -> int:
    """Steps to draw every class once, ceil(num_classes / P)."""
    return self._steps_per_epoch

  @property
  def small_classes(self) -> np.ndarray:
    """Sorted labels of the classes with fewer than K records."""
    return self._classes[self._counts < self._k]

  @property
  def num_small_classes(self) -> int:
    """Number of classes sampled with replacement."""
    return int(np.count_nonzero(self._counts < self._k))

  def epoch(self, step: int) -> int:
    """The epoch that `step` belongs to.

    Args:
      step: a non-negative training step.

    Returns:
      `step // steps_per_epoch`.

    Raises:
      ValueError: for a negative or non-integer step.

    Examples:
      >>> from tcm_jax.data.sampler import ClassBalancedSampler
      >>> sampler = ClassBalancedSampler([0, 0, 1, 1, 2, 2],
      ...                                classes_per_batch=2,
      ...                                samples_per_class=2)
      >>> [sampler.epoch(s) for s in range(5)]
      [0, 0, 1, 1, 2]
    """
    return _checks.check_int('step', step, 0) // self._steps_per_epoch

  def _epoch_slots(self, epoch: int) -> np.ndarray:
    """`[steps_per_epoch * P]` class positions of the epoch's batches."""
    # One read of the cache: loader threads may replace it meanwhile.
    cached = self._epoch_cache
    if cached is not None and cached[0] == epoch:
      return cached[1]
    rng = np.random.default_rng([self._seed, _EPOCH_STREAM, epoch])
    permutation = rng.permutation(self.num_classes)
    missing = self._steps_per_epoch * self._p - self.num_classes
    drawn = permutation[:self.num_classes - (self._p - missing)]
    fill = rng.choice(drawn, missing, replace=False)
    slots = np.concatenate([permutation, fill])
    self._epoch_cache = (epoch, slots)
    return slots

  def _slots(self, step: int) -> np.ndarray:
    """`[P]` class positions of the batch at a validated `step`."""
    epoch, j = divmod(step, self._steps_per_epoch)
    return self._epoch_slots(epoch)[j * self._p:(j + 1) * self._p]

  def batch_classes(self, step: int) -> np.ndarray:
    """The P class labels of the global batch at `step`, in slot order.

    Args:
      step: a non-negative training step.

    Returns:
      `[P]` distinct labels; slot `i` holds rows `[i * K, (i + 1) * K)` of
      `global_batch(step)`.

    Raises:
      ValueError: for a negative or non-integer step.

    Examples:
      >>> import numpy as np
      >>> from tcm_jax.data.sampler import ClassBalancedSampler
      >>> sampler = ClassBalancedSampler([4, 4, 8, 8, 6, 6],
      ...                                classes_per_batch=2,
      ...                                samples_per_class=2)
      >>> epoch = [sampler.batch_classes(s) for s in range(2)]
      >>> np.unique(np.concatenate(epoch)).tolist()
      [4, 6, 8]
    """
    return self._classes[self._slots(_checks.check_int('step', step, 0))]

  def global_batch(self, step: int) -> np.ndarray:
    """Record indices of the global batch at `step`.

    Args:
      step: a non-negative training step.

    Returns:
      `[P * K]` int64 record indices, class-major: K records of the first
      class of `batch_classes(step)`, then K of the second, and so on.

    Raises:
      ValueError: for a negative or non-integer step.

    Examples:
      >>> import numpy as np
      >>> from tcm_jax.data.sampler import ClassBalancedSampler
      >>> labels = np.array([0, 1, 0, 1, 2, 2, 0, 1, 2])
      >>> sampler = ClassBalancedSampler(labels, classes_per_batch=3,
      ...                                samples_per_class=2, seed=1)
      >>> batch = sampler.global_batch(10)
      >>> np.array_equal(labels[batch],
      ...                np.repeat(sampler.batch_classes(10), 2))
      True
    """
    step = _checks.check_int('step', step, 0)
    batch = np.empty((self._p, self._k), np.int64)
    for slot, c in enumerate(self._slots(step)):
      rng = np.random.default_rng([self._seed, _RECORD_STREAM, step, slot])
      n = int(self._counts[c])
      if n >= self._k:
        picks = rng.choice(n, self._k, replace=False)
      else:
        # Whole permutations first, so every record appears K // n or
        # K // n + 1 times rather than leaving some out by chance.
        picks = np.resize(rng.permutation(n), self._k)
      batch[slot] = self._order[self._starts[c] + picks]
    return batch.reshape(-1)

  def process_batch(self, step: int) -> np.ndarray:
    """This process's contiguous slice of `global_batch(step)`.

    Args:
      step: a non-negative training step.

    Returns:
      `[process_batch_size]` record indices: rows
      `[process_index * process_batch_size, (process_index + 1) *
      process_batch_size)` of the global batch.

    Raises:
      ValueError: for a negative or non-integer step.

    Examples:
      >>> import numpy as np
      >>> from tcm_jax.data.sampler import ClassBalancedSampler
      >>> labels = np.arange(24) % 6
      >>> samplers = [ClassBalancedSampler(
      ...     labels, classes_per_batch=4, samples_per_class=2,
      ...     num_processes=2, process_index=i, num_devices=4) for i in (0, 1)]
      >>> samplers[0].process_batch_size
      4
      >>> parts = [s.process_batch(3) for s in samplers]
      >>> np.array_equal(np.concatenate(parts), samplers[0].global_batch(3))
      True
    """
    size = self.process_batch_size
    start = self._process_index * size
    return self.global_batch(step)[start:start + size]
