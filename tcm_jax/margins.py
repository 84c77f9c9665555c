"""TCM's margins measured on embeddings, and the pairs they make hard.

The trainer's `loss.tcm_from_data` sets TCM's margins to those at which given
fractions of a sample's positive and negative pairs are hard
(`margins_from_embeddings`, on `margin_sample`'s images, never the test
classes); every final evaluation reports the fractions of the evaluated
pairs that the run's margins make hard (`hard_pair_fractions`), and the log
warns when a batch has almost none or almost only hard pairs
(`warn_hard_fractions`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from absl import logging
import jax.numpy as jnp
import numpy as np

from tcm_jax import losses

if TYPE_CHECKING:  # in annotations only: the trainer passes them in
  import ml_collections

  from tcm_jax import writers
  from tcm_jax.data import datasets
  from tcm_jax.data import inputs as inputs_lib

_ALMOST_NONE, _ALMOST_ALL = 0.001, 0.95


def _unit_rows(z: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (scaled down first: no overflow), float32
  as in training, for float32 products."""
  z = np.asarray(z, np.float64)
  z = z / np.maximum(np.max(np.abs(z), axis=1, keepdims=True), 1e-300)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300)
  return z.astype(np.float32)


def margins_from_embeddings(embeddings: np.ndarray, labels: np.ndarray, *,
                            hard_pos_fraction: float,
                            hard_neg_fraction: float) -> tuple[float, float]:
  """TCM's `(m+, m-)` from a set of embeddings, as `loss.tcm_from_data` does.

  `losses.margins_from_similarity` of their cosine similarities, every
  ordered pair of distinct rows taking part.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import margins
    >>> z = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> m_pos, m_neg = margins.margins_from_embeddings(
    ...     z, np.array([0, 0, 1, 1]), hard_pos_fraction=0.5,
    ...     hard_neg_fraction=0.25)
    >>> round(m_pos, 4), m_neg > 0.1
    (0.9939, True)
  """
  z = _unit_rows(embeddings)
  found = losses.margins_from_similarity(
      jnp.asarray(z @ z.T, jnp.float32), jnp.asarray(labels),
      hard_pos_fraction=hard_pos_fraction,
      hard_neg_fraction=hard_neg_fraction)
  return float(found.margin_pos), float(found.margin_neg)


def hard_pair_fractions(embeddings: np.ndarray, labels: np.ndarray,
                        margin_pos: float, margin_neg: float,
                        block: int = 2048) -> dict[str, float]:
  """The fractions of pairs TCM counts as hard at these margins.

  Over every ordered pair of distinct rows, in blocks (never `N x N`):
  positive pairs with cosine similarity <= `margin_pos`, negative pairs
  with similarity >= `margin_neg`, compared in float32 as in training.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import margins
    >>> z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 2.0]])
    >>> margins.hard_pair_fractions(z, np.array([0, 0, 1, 1]), 0.9, 0.5)
    {'hard_pos_fraction': 0.5, 'hard_neg_fraction': 0.5}
  """
  z = _unit_rows(embeddings)
  labels = np.asarray(labels)
  counts = np.zeros(4)  # hard pos, pos, hard neg, neg
  for start in range(0, len(z), block):
    s = z[start:start + block] @ z.T
    same = labels[start:start + block, None] == labels[None, :]
    rows = np.arange(s.shape[0])
    same[rows, rows + start] = False  # self pairs take no part
    other = labels[start:start + block, None] != labels[None, :]
    counts += [np.sum(same & (s <= np.float32(margin_pos))), np.sum(same),
               np.sum(other & (s >= np.float32(margin_neg))), np.sum(other)]
  return {'hard_pos_fraction': float(counts[0] / max(counts[1], 1)),
          'hard_neg_fraction': float(counts[2] / max(counts[3], 1))}


def margin_sample(config: ml_collections.ConfigDict,
                  inputs: inputs_lib.Inputs) -> datasets.Split | None:
  """The images TCM's margins are estimated on (`loss.tcm_from_data`).

  The validation classes, or the training classes' images where the
  dataset has no validation side; never the test classes. A seeded sample
  of at most `max_samples` images, the same at every estimate; None when
  the margins do not come from the data.

  Examples:
    >>> from tcm_jax import config as config_lib, margins
    >>> from tcm_jax.data import inputs as inputs_lib
    >>> config = config_lib.default_config()
    >>> config.dataset.name, config.input.recipe = 'digits', 'small'
    >>> config.input.classes_per_batch = 5
    >>> config.loss.tcm_from_data.enabled = True
    >>> config.loss.tcm_from_data.max_samples = 100
    >>> sample = margins.margin_sample(config, inputs_lib.create_inputs(config))
    >>> sample.name, len(sample)
    ('digits/train', 100)
  """
  options = config.loss.tcm_from_data
  if not options.enabled:
    return None
  if not config.pretrained:
    logging.warning(
        'TCM\'s margins come from the data of a model that starts untrained '
        '(no pretrained): its early embedding is nearly collapsed, and '
        'margins from it have hurt from-scratch runs (the glyph study in '
        'REPRODUCTION.md). They suit a pretrained starting model; from '
        'scratch, prefer fixed margins (loss.tcm).')
  source = inputs.train if inputs.val is None else inputs.val
  if inputs.val is None:
    logging.info('%s has no validation side: TCM\'s margins come from its '
                 'training classes.', config.dataset.name)
  rows = np.arange(len(source))
  if len(rows) > options.max_samples:
    rows = np.sort(np.random.default_rng(config.seed).choice(
        rows, options.max_samples, replace=False))
  return source.subset(rows)


def warn_hard_fractions(step: int, values: dict[str, float]) -> None:
  """Warns when a TCM part has almost no hard pair or almost only hard ones.

  With almost none the part does nothing; with almost all it pulls on every
  pair instead of correcting the hard ones (a run can collapse that way,
  e.g. with margins from a trained model applied to an untrained one).

  Examples:
    >>> from tcm_jax import margins
    >>> margins.warn_hard_fractions(7, {'hard_pos_fraction': 0.5,
    ...                                 'hard_neg_fraction': 0.01})  # fine
  """
  for part in ('pos', 'neg'):
    fraction = values.get(f'hard_{part}_fraction')
    if fraction is None:
      continue
    if fraction < _ALMOST_NONE or fraction > _ALMOST_ALL:
      logging.warning(
          'Step %d: %.1f%% of the batch\'s %s pairs are hard for TCM (%s): '
          'its %s part %s. Check the margins (loss.tcm, or '
          'loss.tcm_from_data).', step, 100 * fraction,
          'positive' if part == 'pos' else 'negative',
          f'm{"+" if part == "pos" else "-"}',
          'positive' if part == 'pos' else 'negative',
          'does almost nothing' if fraction < _ALMOST_NONE else
          'acts on nearly every pair, not on the hard ones')


def estimate_margins(step: int, embed: Callable[[datasets.Split], Any],
                     sample: datasets.Split,
                     config: ml_collections.ConfigDict,
                     writer: writers.MetricsWriter) -> tuple[float, float]:
  """TCM's margins from `sample`, as `loss.tcm_from_data` says, logged.

  `embed(split)` gives `(embeddings, labels)` with the model being trained;
  the margins are logged as a `margins` record of `step`.

  Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> from tcm_jax import config as config_lib, margins, writers
    >>> from tcm_jax.data import datasets
    >>> sample = datasets.load_split('digits', 'train').subset(np.arange(40))
    >>> embed = lambda split: (np.eye(10)[split.labels]
    ...                        + np.random.default_rng(0).normal(
    ...                            size=(len(split), 10)), split.labels)
    >>> workdir = tempfile.mkdtemp()
    >>> writer = writers.MetricsWriter(workdir, -1)
    >>> m_pos, m_neg = margins.estimate_margins(
    ...     0, embed, sample, config_lib.default_config(), writer)
    >>> writer.close()
    >>> writers.logged_margins(workdir)[0]['num_samples']
    40
  """
  options = config.loss.tcm_from_data
  found = margins_from_embeddings(
      *embed(sample), hard_pos_fraction=options.hard_pos_fraction,
      hard_neg_fraction=options.hard_neg_fraction)
  writer.write(step, 'margins', {'margin_pos': found[0],
                                 'margin_neg': found[1],
                                 'num_samples': len(sample)})
  logging.info('Step %d: TCM margins from %s: m+ %.4f, m- %.4f.', step,
               sample.name, *found)
  return found
