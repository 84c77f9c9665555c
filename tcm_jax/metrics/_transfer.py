"""Calibration transfer: a threshold chosen on one set, measured on another.

A deployed threshold is chosen on the data at hand (a calibration set) and
then serves other data: other classes, other customers. Whether it still
meets its target is the question of threshold consistency across sets. Here
the threshold at each target FAR is the first grid edge (2**-14 in distance)
at which the calibration set's global FAR reaches the target (as in
`operating_points`; `calibrate_threshold(..., calibration=...)` uses the
exact engine's midpoint of a fine bin instead, whose FAR may fall short of
the target by the pairs of half a bin), and the evaluated set's
FAR and FRR are counted exactly at it, globally and per class.

- `calibration_transfer`: a calibration set and an evaluated set (e.g. the
  validation side of the training classes and the test classes).
- `fold_transfer`: the classes of one set dealt into k folds (the 10-fold
  protocol of face verification, over classes): each fold is measured at the
  threshold chosen on the pairs of the other folds. Each fold's pairs are
  those within it (its queries against its references), so a fold's
  negatives never meet the classes of the folds that calibrate it.

A target is resolved only when the calibration pairs hold at least
`min_false_accepts` negatives within it (see `operating_points`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tcm_jax import _checks
from tcm_jax.metrics import _histograms
from tcm_jax.metrics import _operating_points
from tcm_jax.metrics import _pair_counts
from tcm_jax.metrics import _threshold

DEFAULT_TARGETS = (1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class CalibrationTransfer:
  """Thresholds chosen on a calibration set, measured on an evaluated one.

  Attributes:
    target_fars: the targets asked for, in the order given.
    points: one per target: the `ThresholdCalibration` of the evaluated set
      at the threshold chosen on the calibration set (its
      `calibration_far` the FAR reached there), or None where the
      calibration set cannot resolve the target.
    classes: `[T]` labels of the evaluated set's evaluated classes (the
      rows of each point's `class_far` and `class_frr`).
    num_calibration_negatives: negative pairs of the calibration set.
    min_false_accepts: the resolvability rule.
  """
  target_fars: tuple[float, ...]
  points: tuple[_threshold.ThresholdCalibration | None, ...]
  classes: np.ndarray
  num_calibration_negatives: int
  min_false_accepts: int

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready values: per target, threshold and rates reached (the
    per-class rates as their spreads)."""
    rows = []
    for target, point in zip(self.target_fars, self.points):
      row = {'target_far': target, 'resolvable': point is not None}
      if point is not None:
        row.update(threshold=point.threshold,
                   calibration_far=point.calibration_far, far=point.far,
                   frr=point.frr, class_far=point.far_spread,
                   class_frr=point.frr_spread)
      rows.append(row)
    return {'targets': rows,
            'num_calibration_negatives': self.num_calibration_negatives,
            'min_false_accepts': self.min_false_accepts}


def transfer_from_histograms(calibration: _histograms.PairHistograms,
                             evaluated: _histograms.PairHistograms,
                             classes: np.ndarray | None = None, *,
                             target_fars: Sequence[float] = DEFAULT_TARGETS,
                             min_false_accepts: int = (
                                 _operating_points.MIN_FALSE_ACCEPTS)
                             ) -> CalibrationTransfer:
  """`calibration_transfer` of two sets' histograms (any classes each).

  Args:
    calibration: the histograms the thresholds are chosen on.
    evaluated: the histograms they are measured on.
    classes: `[classes]` labels of `evaluated`'s rows (default: indices).
      The calibration set's classes are its own: they need not match.
    target_fars: the global FARs to meet, each in (0, 1].
    min_false_accepts: calibration negatives a target must hold.

  Returns:
    `CalibrationTransfer`.

  Raises:
    ValueError: fewer than two evaluated classes, or a calibration set
      without two classes.
    BeyondCutError: a threshold past either set's histograms' cut.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _transfer, advanced
    >>> z = np.float32([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1], [1, 0.9]])
    >>> hist = advanced.pair_histograms(advanced.source_from_embeddings(
    ...     z, [0, 0, 1, 1, 2, 2]))
    >>> got = _transfer.transfer_from_histograms(
    ...     hist, hist, target_fars=(0.5,), min_false_accepts=1)
    >>> got.points[0].far == got.points[0].calibration_far  # the same set
    True
  """
  targets = _operating_points.check_fars(target_fars, 'target_fars')
  min_false_accepts = _checks.check_int('min_false_accepts',
                                        min_false_accepts, 1)
  mask = _operating_points.class_mask(evaluated, 'the evaluated set')
  _operating_points.class_mask(calibration, 'the calibration set')
  if classes is not None and len(classes) != len(mask):
    raise ValueError(
        f"classes must label the evaluated histograms' {len(mask)} rows, "
        f'got {len(classes)} labels.')
  negatives = calibration.global_negatives()
  num_negatives = int(negatives.sum())
  points = []
  for target in targets:
    if not _operating_points.resolvable(target, num_negatives, min_false_accepts):
      points.append(None)
      continue
    edge = calibration.far_edge(target)
    reached = float(negatives[:edge + 1].sum() / num_negatives)
    points.append(dataclasses.replace(
        _operating_points.measure_at_edge(evaluated, edge, target, mask),
        calibration_far=reached))
  classes = np.arange(len(mask)) if classes is None else np.asarray(classes)
  return CalibrationTransfer(
      target_fars=targets, points=tuple(points), classes=classes[mask],
      num_calibration_negatives=num_negatives,
      min_false_accepts=min_false_accepts)


def calibration_transfer(embeddings, labels, calibration_embeddings,
                         calibration_labels, *,
                         target_fars: Sequence[float] = DEFAULT_TARGETS,
                         min_false_accepts: int = (
                             _operating_points.MIN_FALSE_ACCEPTS),
                         product: str | None = None,
                         progress: _pair_counts.ProgressFn | None = None
                         ) -> CalibrationTransfer:
  """Thresholds chosen on a calibration set and measured on another.

  Each set is compared with itself (leave-one-out, every pair of it), in
  one pass of per-class distance histograms each (never an `[N, N]`
  matrix). For each target FAR, the threshold is the first grid edge at
  which the calibration set's global FAR reaches it; the evaluated set's
  global FAR and FRR, and each class's, are counted exactly there.

  Args:
    embeddings: `[N, dim]` the evaluated set (e.g. the test classes).
    labels: `[N]` its integer class ids.
    calibration_embeddings: `[M, dim]` the calibration set (e.g. held-out
      samples of the training classes), the same `dim`.
    calibration_labels: `[M]` its class ids (its own: they need not be the
      evaluated set's classes).
    target_fars: the global FARs to meet, each in (0, 1].
    min_false_accepts: a target is resolved only when the calibration set
      has this many negative pairs within it (default 30).
    product: `'numpy'` or `'jax'` (see `evaluate_embeddings`).
    progress: `fn(done, total)` after each block of each set.

  Returns:
    `CalibrationTransfer`: per target, the threshold, the FAR it reached
    on the calibration set, and the FAR and FRR it reaches on the evaluated
    set, globally and per class.

  Raises:
    ValueError: bad embeddings or labels, embeddings of different `dim`,
      a set without two classes of two samples, a FAR outside (0, 1].

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(40), 8)
    >>> z = rng.normal(size=(40, 16))[labels] + rng.normal(size=(320, 16))
    >>> # Calibrate on 20 classes, measure on the other 20.
    >>> got = metrics.calibration_transfer(z[160:], labels[160:], z[:160],
    ...                                    labels[:160])
    >>> at = got.points[1]  # target 1e-2
    >>> print(f'{at.calibration_far:.3f}', 0 < at.far < 0.05)
    0.010 True
  """
  targets = _operating_points.check_fars(target_fars, 'target_fars')
  _checks.check_int('min_false_accepts', min_false_accepts, 1)
  evaluated = _pair_counts.source_from_embeddings(embeddings, labels)
  calibration = _pair_counts.source_from_embeddings(
      calibration_embeddings, calibration_labels)
  dims = [source.embeddings.shape[1] for source in (evaluated, calibration)]
  if dims[0] != dims[1]:
    raise ValueError(
        'calibration_embeddings must have the dimension of embeddings '
        f'({dims[0]}), got {dims[1]}.')
  histograms = [_operating_points.pair_histograms(
      source, product=product, progress=progress)
                for source in (calibration, evaluated)]
  return transfer_from_histograms(*histograms, evaluated.classes,
                                  target_fars=targets,
                                  min_false_accepts=min_false_accepts)


@dataclasses.dataclass(frozen=True)
class FoldTransfer:
  """The k-fold calibration transfer over the classes of one set.

  Attributes:
    target_fars: the targets every fold's calibration pairs resolve.
    unresolved_fars: the targets asked for that some fold's do not.
    fold_classes: the labels dealt into each fold.
    threshold: `[folds, targets]` each fold's threshold, chosen on the
      pairs of the other folds.
    calibration_far: `[folds, targets]` the FAR it reached on them.
    far: `[folds, targets]` the global FAR it reaches on the fold.
    frr: `[folds, targets]` the global FRR there.
    classes: `[T]` the evaluated classes, fold after fold.
    class_far: `[T, targets]` each class's FAR at its fold's thresholds.
    class_frr: `[T, targets]` each class's FRR there.
    min_false_accepts: the resolvability rule.
  """
  target_fars: tuple[float, ...]
  unresolved_fars: tuple[float, ...]
  fold_classes: tuple[np.ndarray, ...]
  threshold: np.ndarray
  calibration_far: np.ndarray
  far: np.ndarray
  frr: np.ndarray
  classes: np.ndarray
  class_far: np.ndarray
  class_frr: np.ndarray
  min_false_accepts: int

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready values: per target, the mean and standard deviation over
    folds of the threshold and of the FAR and FRR reached, and the spread
    of the classes' FAR and FRR."""
    rows = []
    for j, target in enumerate(self.target_fars):
      rows.append({
          'target_far': target,
          **{f'{name}_{stat}': float(fn(values[:, j]))
             for name, values in (('threshold', self.threshold),
                                  ('far', self.far), ('frr', self.frr))
             for stat, fn in (('mean', np.mean), ('std', np.std))},
          'class_far': _threshold.spread(self.class_far[:, j]),
          'class_frr': _threshold.spread(self.class_frr[:, j]),
      })
    return {'folds': len(self.fold_classes), 'targets': rows,
            'unresolved_fars': list(self.unresolved_fars),
            'min_false_accepts': self.min_false_accepts}


def deal_classes(classes: np.ndarray, folds: int, seed: Any) -> np.ndarray:
  """`[classes]` the fold of each class: a seeded permutation dealt round
  the folds, so fold sizes differ by one class at most.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.metrics import _transfer
    >>> np.bincount(_transfer.deal_classes(np.arange(7), 3, seed=0))
    array([3, 2, 2])
  """
  order = np.random.default_rng(seed).permutation(len(classes))
  fold = np.empty(len(classes), np.int64)
  fold[order] = np.arange(len(classes)) % folds
  return fold


def fold_transfer(embeddings, labels, *, folds: int = 10,
                  target_fars: Sequence[float] = DEFAULT_TARGETS,
                  min_false_accepts: int = (
                      _operating_points.MIN_FALSE_ACCEPTS),
                  seed: Any = 0, product: str | None = None,
                  progress: _pair_counts.ProgressFn | None = None
                  ) -> FoldTransfer:
  """The k-fold calibration transfer over classes.

  The classes are dealt into `folds` folds (`deal_classes`: seeded, sizes
  within one class). Each fold is a set of its own: its samples against
  each other (leave-one-out), in per-class histograms (one pass per fold,
  `N**2 / folds` pairs in all). For each fold and target FAR, the threshold
  is the first grid edge at which the other folds' pairs, pooled, reach the
  target; the fold's global and per-class FAR and FRR are counted exactly
  there. The spread over folds is how far a threshold calibrated on some
  classes misses its target on others.

  Args:
    embeddings: `[N, dim]` embeddings.
    labels: `[N]` integer class ids.
    folds: folds, at least 2 and at most the number of classes.
    target_fars: the global FARs to meet, each in (0, 1].
    min_false_accepts: a target is kept only where every fold's calibration
      pairs hold this many negatives within it.
    seed: for `np.random.default_rng`: which classes go together.
    product: `'numpy'` or `'jax'` (see `evaluate_embeddings`).
    progress: `fn(done, total)` after each block of each fold.

  Returns:
    `FoldTransfer`.

  Raises:
    ValueError: bad embeddings or labels, `folds` below 2 or above the
      number of classes, a fold without two classes of two samples, no
      target resolved, a FAR outside (0, 1].

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import metrics
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(40), 8)
    >>> z = rng.normal(size=(40, 16))[labels] + rng.normal(size=(320, 16))
    >>> got = metrics.fold_transfer(z, labels, folds=4)
    >>> got.far.shape, got.target_fars  # 4 folds; 1e-3 needs more pairs
    ((4, 2), (0.01, 0.1))
  """
  targets = _operating_points.check_fars(target_fars, 'target_fars')
  min_false_accepts = _checks.check_int('min_false_accepts',
                                        min_false_accepts, 1)
  whole = _pair_counts.source_from_embeddings(embeddings, labels)
  folds = _checks.check_int('folds', folds, 2)
  if folds > whole.num_classes:
    raise ValueError(f'folds={folds} is more than the {whole.num_classes} '
                     'classes to deal into them: use fewer folds.')
  fold_of = deal_classes(whole.classes, folds, seed)[whole.query_ids]
  embeddings = np.asarray(whole.embeddings)
  fold_labels = [whole.classes[whole.query_ids[fold_of == f]]
                 for f in range(folds)]
  histograms, masks = [], []
  for f in range(folds):
    source = _pair_counts.source_from_embeddings(embeddings[fold_of == f],
                                                 fold_labels[f])
    histograms.append(_operating_points.pair_histograms(
        source, product=product, progress=progress))
    masks.append(_operating_points.class_mask(histograms[-1], f'fold {f}'))
  negatives = np.stack([h.global_negatives() for h in histograms])
  pools = negatives.sum(axis=0) - negatives  # [folds, bins]
  smallest = int(pools.sum(axis=1).min())
  kept = tuple(t for t in targets
               if _operating_points.resolvable(t, smallest, min_false_accepts))
  if not kept:
    raise ValueError(
        f'no target in target_fars={targets} is resolved: the smallest '
        f'calibration pool holds {smallest} negative pairs, and a target '
        f'needs target * {smallest} >= min_false_accepts='
        f'{min_false_accepts}; use larger targets or fewer folds.')
  shape = (folds, len(kept))
  threshold, calibration_far, far, frr = (np.empty(shape) for _ in range(4))
  class_far, class_frr = [], []
  for f in range(folds):
    fold_far, fold_frr = [], []
    for j, target in enumerate(kept):
      edge = _threshold.quantile_bin(pools[f], target)
      point = _operating_points.measure_at_edge(histograms[f], edge, target,
                                                masks[f])
      threshold[f, j] = point.threshold
      calibration_far[f, j] = pools[f, :edge + 1].sum() / pools[f].sum()
      far[f, j], frr[f, j] = point.far, point.frr
      fold_far.append(point.class_far)
      fold_frr.append(point.class_frr)
    class_far.append(np.stack(fold_far, axis=1))
    class_frr.append(np.stack(fold_frr, axis=1))
  fold_classes = tuple(np.unique(labels_f) for labels_f in fold_labels)
  return FoldTransfer(
      target_fars=kept,
      unresolved_fars=tuple(t for t in targets if t not in kept),
      fold_classes=fold_classes, threshold=threshold,
      calibration_far=calibration_far, far=far, frr=frr,
      classes=np.concatenate([c[m] for c, m in zip(fold_classes, masks)]),
      class_far=np.concatenate(class_far),
      class_frr=np.concatenate(class_frr),
      min_false_accepts=min_false_accepts)
