"""Base losses by name, and their sum with TCM in one objective.

A config names a base loss and its hyperparameters; `objective` returns a
function that computes the similarity-based statistics of the base loss and
of TCM from one similarity matrix, and returns the total with its parts for
logging. The same objective has a cross-device form (`Objective.sharded`)
that gathers the references once for both losses.

  >>> import jax.numpy as jnp
  >>> from tcm_jax.losses import registry
  >>> fn = registry.objective('smooth_ap', tcm={})  # TCM with its defaults
  >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
  >>> total, parts = fn(s, jnp.array([0, 0, 1]))
  >>> sorted(parts)
  ['base', 'hard_neg_fraction', 'hard_pos_fraction', 'tcm', 'tcm_neg', 'tcm_pos']
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tcm_jax.losses import _pair_based
from tcm_jax.losses import _pairs
from tcm_jax.losses import _proxy
from tcm_jax.losses import _ranking
from tcm_jax.losses import _similarity
from tcm_jax.losses import tcm as tcm_lib

_MASK_ARGS = frozenset({'where', 'ref_where', 'exclude_self', 'query_offset'})


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """A loss over a similarity matrix, given as statistics and a reduction.

  Attributes:
    name: the registry name.
    statistics_fn: `fn(similarity, labels, ref_labels, **hyper, **masks)`
      returning a pytree of sums and counts (summable across devices).
    reduce_fn: `fn(stats, **reduce_hyper)` returning the scalar loss.
    reduce_args: hyperparameters that go to `reduce_fn`, not to statistics.
    reference: the paper.
  """
  name: str
  statistics_fn: Callable[..., Any]
  reduce_fn: Callable[..., jax.Array]
  reduce_args: tuple[str, ...] = ()
  reference: str = ''

  def hyperparameters(self) -> dict[str, Any]:
    """Every hyperparameter with its default."""
    names = {}
    for fn in (self.statistics_fn, self.reduce_fn):
      for p in inspect.signature(fn).parameters.values():
        if p.kind == p.KEYWORD_ONLY and p.name not in _MASK_ARGS:
          names[p.name] = p.default
    return names

  def split(self, hyper: dict[str, Any]):
    """Hyperparameters for the statistics and for the reduction."""
    unknown = set(hyper) - set(self.hyperparameters())
    if unknown:
      raise ValueError(
          f'unknown hyperparameters {sorted(unknown)} for loss {self.name!r}; '
          f'it takes {sorted(self.hyperparameters())}.')
    stats = {k: v for k, v in hyper.items() if k not in self.reduce_args}
    reduce = {k: v for k, v in hyper.items() if k in self.reduce_args}
    return stats, reduce


LOSSES: dict[str, PairLoss] = {
    'tcm': PairLoss(
        'tcm', tcm_lib.tcm_statistics, tcm_lib.tcm_loss_from_statistics,
        ('lambda_pos', 'lambda_neg'),
        'Zhang et al., Threshold-Consistent Margin Loss, ICLR 2024'),
    'contrastive': PairLoss(
        'contrastive', _pair_based.contrastive_statistics,
        _pair_based.contrastive_from_statistics, (),
        'Hadsell, Chopra, LeCun, CVPR 2006'),
    'triplet': PairLoss(
        'triplet', _pair_based.triplet_statistics, _pair_based.mean_of, (),
        'Schroff et al., CVPR 2015; Hermans et al., 2017'),
    'multi_similarity': PairLoss(
        'multi_similarity', _pair_based.multi_similarity_statistics,
        _pair_based.mean_of, (), 'Wang et al., CVPR 2019'),
    'smooth_ap': PairLoss(
        'smooth_ap', _ranking.smooth_ap_statistics,
        _ranking.loss_from_statistics, (), 'Brown et al., ECCV 2020'),
    'recall_at_k': PairLoss(
        'recall_at_k', _ranking.recall_at_k_statistics,
        _ranking.loss_from_statistics, (), 'Patel et al., CVPR 2022'),
}


def get(name: str) -> PairLoss:
  """The registered loss `name`; a clear error lists the names otherwise."""
  try:
    return LOSSES[name]
  except KeyError:
    raise ValueError(
        f'unknown loss {name!r}; registered: {sorted(LOSSES)}.') from None


def _frozen(hyper: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  """Hashable hyperparameters (an objective is a static argument of jit)."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in hyper.items()))


@dataclasses.dataclass(frozen=True)
class Objective:
  """`base + tcm`, each with bound hyperparameters; see `objective`."""
  base: PairLoss
  frozen_base_hyper: tuple[tuple[str, Any], ...]
  frozen_tcm_hyper: tuple[tuple[str, Any], ...] | None

  @property
  def base_hyper(self) -> dict[str, Any]:
    return dict(self.frozen_base_hyper)

  @property
  def tcm_hyper(self) -> dict[str, Any] | None:
    return (None if self.frozen_tcm_hyper is None
            else dict(self.frozen_tcm_hyper))

  def _statistics(self, similarity, labels, ref_labels=None, **masks):
    base_stats, _ = self.base.split(self.base_hyper)
    stats = {'base': self.base.statistics_fn(
        similarity, labels, ref_labels, **base_stats, **masks)}
    if self.tcm_hyper is not None:
      tcm_stats, _ = LOSSES['tcm'].split(self.tcm_hyper)
      stats['tcm'] = tcm_lib.tcm_statistics(
          similarity, labels, ref_labels, **tcm_stats, **masks)
    return stats

  def _reduce(self, stats) -> tuple[jax.Array, dict[str, jax.Array]]:
    _, base_reduce = self.base.split(self.base_hyper)
    parts = {'base': self.base.reduce_fn(stats['base'], **base_reduce)}
    total = parts['base']
    if self.tcm_hyper is not None:
      _, tcm_reduce = LOSSES['tcm'].split(self.tcm_hyper)
      parts['tcm'] = tcm_lib.tcm_loss_from_statistics(stats['tcm'],
                                                      **tcm_reduce)
      parts.update(tcm_lib.tcm_diagnostics(stats['tcm']))
      total = total + parts['tcm']
    return total, parts

  def __call__(self, similarity, labels, ref_labels=None, **masks):
    """`(loss, parts)` over a similarity matrix (masks as for `tcm_loss`)."""
    return self._reduce(self._statistics(similarity, labels, ref_labels,
                                         **masks))

  def sharded(self, embeddings: jax.Array, labels: jax.Array, *, axis_name,
              where: jax.Array | None = None,
              precision: jax.lax.PrecisionLike = None):
    """`(loss, parts)` of the global batch, from inside `jax.shard_map`."""
    stats = _pairs.sharded_statistics(
        self._statistics, embeddings, labels, axis_name=axis_name,
        where=where, precision=precision)
    return self._reduce(stats)


def objective(base: str, *, tcm: dict[str, Any] | None = None,
              **base_hyper) -> Objective:
  """The training objective `base + TCM`, as one function of a similarity.

  Args:
    base: a registered loss name (`sorted(LOSSES)`).
    tcm: TCM's hyperparameters (`{}` for the paper's defaults), or None for
      the base loss alone.
    **base_hyper: the base loss's hyperparameters (defaults: its paper's).

  Returns:
    An `Objective`: `objective(similarity, labels)` and
    `objective.sharded(embeddings, labels, axis_name=...)` return
    `(loss, parts)`, parts holding `base`, `tcm` and TCM's diagnostics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import registry
    >>> fn = registry.objective('contrastive', margin_neg=0.2, tcm={})
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> total, parts = fn(s, jnp.array([0, 0, 1]))
    >>> bool(jnp.isclose(total, parts['base'] + parts['tcm']))
    True
  """
  loss = get(base)
  loss.split(base_hyper)  # unknown names fail here, not at trace time
  if tcm is not None:
    LOSSES['tcm'].split(tcm)
  return Objective(loss, _frozen(base_hyper),
                   None if tcm is None else _frozen(tcm))


# Losses over embeddings and a [classes, dim] proxy matrix the caller owns.
PROXY_LOSSES: dict[str, Callable[..., jax.Array]] = {
    'normalized_softmax': _proxy.normalized_softmax_loss,
    'cosface': _proxy.cosface_loss,
    'arcface': _proxy.arcface_loss,
    'proxy_anchor': _proxy.proxy_anchor_loss,
}


@dataclasses.dataclass(frozen=True)
class ProxyObjective:
  """A proxy loss plus TCM over the batch; see `proxy_objective`."""
  name: str
  frozen_base_hyper: tuple[tuple[str, Any], ...]
  frozen_tcm_hyper: tuple[tuple[str, Any], ...] | None

  def _with_tcm(self, base, tcm_statistics_fn):
    """`(loss, parts)`: `base` plus TCM from `tcm_statistics_fn(**hyper)`."""
    parts = {'base': base}
    total = base
    if self.frozen_tcm_hyper is not None:
      stats_hyper, reduce_hyper = LOSSES['tcm'].split(
          dict(self.frozen_tcm_hyper))
      stats = tcm_statistics_fn(**stats_hyper)
      parts['tcm'] = tcm_lib.tcm_loss_from_statistics(stats, **reduce_hyper)
      parts.update(tcm_lib.tcm_diagnostics(stats))
      total = total + parts['tcm']
    return total, parts

  def __call__(self, embeddings, labels, proxies, *, where=None):
    """`(loss, parts)` of a batch of embeddings with the class proxies."""
    base = PROXY_LOSSES[self.name](embeddings, labels, proxies, where=where,
                                   **dict(self.frozen_base_hyper))
    zeroed = _pairs.zero_padded_rows('where', embeddings, where)
    return self._with_tcm(base, lambda **hyper: tcm_lib.tcm_statistics(
        _similarity.cosine_similarity(zeroed), labels, where=where, **hyper))

  def sharded(self, embeddings, labels, proxies, *, axis_name, where=None):
    """`(loss, parts)` of the global batch, from inside `jax.shard_map`.

    Proxy-anchor adds its per-proxy sums over devices before the logarithms;
    the other proxy losses are means over samples, combined as a mean
    weighted by each device's unpadded rows; TCM couples the whole batch
    (`sharded_tcm_statistics`). Values and gradients (under `check_vma`)
    equal one device holding the global batch.
    """
    hyper = dict(self.frozen_base_hyper)
    if self.name == 'proxy_anchor':
      base = _proxy.sharded_proxy_anchor_loss(
          embeddings, labels, proxies, axis_name=axis_name, where=where,
          **hyper)
    else:
      local = PROXY_LOSSES[self.name](embeddings, labels, proxies,
                                      where=where, **hyper)
      count = (jnp.float32(embeddings.shape[0]) if where is None
               else jnp.sum(where, dtype=jnp.float32))
      base = (jax.lax.psum(local * count, axis_name)
              / jnp.maximum(jax.lax.psum(count, axis_name), 1.0))
    return self._with_tcm(base, lambda **hyper: tcm_lib.sharded_tcm_statistics(
        embeddings, labels, axis_name=axis_name, where=where, **hyper))


def proxy_objective(base: str, *, tcm: dict[str, Any] | None = None,
                    **base_hyper) -> ProxyObjective:
  """A proxy/classification loss plus TCM, as one function.

  Args:
    base: one of `sorted(PROXY_LOSSES)`.
    tcm: TCM's hyperparameters (`{}` for the defaults), or None.
    **base_hyper: the proxy loss's hyperparameters.

  Returns:
    `fn(embeddings, labels, proxies, where=None) -> (loss, parts)`, and
    its cross-device form `fn.sharded(embeddings, labels, proxies,
    axis_name=..., where=None)` for use inside `jax.shard_map`.

  Examples:
    >>> import jax
    >>> from tcm_jax.losses import registry
    >>> fn = registry.proxy_objective('arcface', scale=16.0, tcm={})
    >>> z = jax.random.normal(jax.random.key(0), (8, 4))
    >>> w = jax.random.normal(jax.random.key(1), (3, 4))
    >>> total, parts = fn(z, jax.numpy.array([0, 0, 1, 1, 2, 2, 0, 1]), w)
    >>> sorted(parts)[:2]
    ['base', 'hard_neg_fraction']
  """
  if base not in PROXY_LOSSES:
    raise ValueError(
        f'unknown proxy loss {base!r}; registered: {sorted(PROXY_LOSSES)}.')
  takes = [p.name for p in inspect.signature(PROXY_LOSSES[base]).parameters
           .values() if p.kind == p.KEYWORD_ONLY and p.name != 'where']
  unknown = set(base_hyper) - set(takes)
  if unknown:
    raise ValueError(f'unknown hyperparameters {sorted(unknown)} for loss '
                     f'{base!r}; it takes {sorted(takes)}.')
  if tcm is not None:
    LOSSES['tcm'].split(tcm)
  return ProxyObjective(base, _frozen(base_hyper),
                        None if tcm is None else _frozen(tcm))


def with_tcm_margins(objective_: Objective | ProxyObjective, margin_pos,
                     margin_neg) -> Objective | ProxyObjective:
  """The same objective with TCM's margins replaced.

  The margins may be traced values: a train step that takes them as
  arguments builds its objective with this inside the step, so that margins
  re-estimated during training cost no recompilation. An objective without
  TCM is returned unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import registry
    >>> fn = registry.objective('contrastive', tcm={})
    >>> moved = registry.with_tcm_margins(fn, 0.7, 0.3)
    >>> moved.tcm_hyper['margin_pos'], moved.tcm_hyper['margin_neg']
    (0.7, 0.3)
    >>> registry.with_tcm_margins(registry.objective('contrastive'), 0.7,
    ...                           0.3).tcm_hyper is None
    True
  """
  if objective_.frozen_tcm_hyper is None:
    return objective_
  hyper = dict(objective_.frozen_tcm_hyper)
  hyper.update(margin_pos=margin_pos, margin_neg=margin_neg)
  return dataclasses.replace(objective_, frozen_tcm_hyper=tuple(
      sorted(hyper.items())))
