"""Base losses by name, and their sum with TCM in one objective.

A config names a base loss and its hyperparameters; `objective` returns one
`Objective` for every kind of base loss. A pair or ranking loss (`LOSSES`)
computes its statistics and TCM's from one similarity matrix; a proxy loss
(`PROXY_LOSSES`) scores embeddings against class proxies, the objective's own
parameters (`Objective.init_params`). Both return the total with its parts
for logging, and have a cross-device form (`Objective.sharded`) that equals
one device holding the global batch.

  >>> import jax.numpy as jnp
  >>> from tcm_jax.losses import registry
  >>> fn = registry.objective('smooth_ap', tcm={})  # TCM with its defaults
  >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
  >>> total, parts = fn(s, jnp.array([0, 0, 1]))
  >>> sorted(parts)
  ['base', 'hard_neg_fraction', 'hard_pos_fraction', 'tcm', 'tcm_neg', 'tcm_pos']
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import inspect
from typing import Any, Callable
import warnings

import jax
import jax.numpy as jnp

from tcm_jax import similarity as similarity_lib
from tcm_jax.losses import _pair_based
from tcm_jax.losses import _pairs
from tcm_jax.losses import _proxy
from tcm_jax.losses import _ranking
from tcm_jax.losses import _tcm as tcm_lib

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


# The TCM term added to a base loss (`tcm=` of `objective`); not a base loss.
TCM = PairLoss(
    'tcm', tcm_lib.tcm_statistics, tcm_lib.tcm_loss_from_statistics,
    ('lambda_pos', 'lambda_neg'),
    'Zhang et al., Threshold-Consistent Margin Loss, ICLR 2024')

# Base losses over a similarity matrix.
LOSSES: dict[str, PairLoss] = {
    'contrastive': PairLoss(
        'contrastive', _pair_based.contrastive_statistics,
        _pair_based.contrastive_loss_from_statistics, (),
        'Hadsell, Chopra, LeCun, CVPR 2006'),
    'triplet': PairLoss(
        'triplet', _pair_based.triplet_statistics,
        _pair_based.triplet_loss_from_statistics, (),
        'Schroff et al., CVPR 2015; Hermans et al., 2017'),
    'multi_similarity': PairLoss(
        'multi_similarity', _pair_based.multi_similarity_statistics,
        _pair_based.multi_similarity_loss_from_statistics, (),
        'Wang et al., CVPR 2019'),
    'smooth_ap': PairLoss(
        'smooth_ap', _ranking.smooth_ap_statistics,
        _ranking.smooth_ap_loss_from_statistics, (), 'Brown et al., ECCV 2020'),
    'recall_at_k': PairLoss(
        'recall_at_k', _ranking.recall_at_k_statistics,
        _ranking.recall_at_k_loss_from_statistics, (),
        'Patel et al., CVPR 2022'),
}


@dataclasses.dataclass(frozen=True)
class ProxyLoss:
  """A loss of embeddings against a `[classes, dim]` proxy matrix.

  Attributes:
    name: the registry name.
    loss_fn: `fn(embeddings, labels, proxies, *, where, **hyper)`.
    reference: the paper.
  """
  name: str
  loss_fn: Callable[..., jax.Array]
  reference: str = ''

  def hyperparameters(self) -> dict[str, Any]:
    """Every hyperparameter with its default."""
    return {p.name: p.default
            for p in inspect.signature(self.loss_fn).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name != 'where'}

  def split(self, hyper: dict[str, Any]):
    """`(hyper, {})`, after checking the names (as `PairLoss.split`)."""
    unknown = set(hyper) - set(self.hyperparameters())
    if unknown:
      raise ValueError(
          f'unknown hyperparameters {sorted(unknown)} for loss {self.name!r}; '
          f'it takes {sorted(self.hyperparameters())}.')
    return hyper, {}

  def sharded(self, embeddings, labels, proxies, *, axis_name, where,
              **hyper) -> jax.Array:
    """The loss of the global batch, from inside `jax.shard_map`.

    Proxy-anchor adds its per-proxy sums over devices before the logarithms;
    the other proxy losses are means over samples, combined as a mean
    weighted by each device's unpadded rows.
    """
    if self.name == 'proxy_anchor':
      return _proxy.sharded_proxy_anchor_loss(
          embeddings, labels, proxies, axis_name=axis_name, where=where,
          **hyper)
    local = self.loss_fn(embeddings, labels, proxies, where=where, **hyper)
    count = (jnp.float32(embeddings.shape[0]) if where is None
             else jnp.sum(where, dtype=jnp.float32))
    return (jax.lax.psum(local * count, axis_name)
            / jnp.maximum(jax.lax.psum(count, axis_name), 1.0))


# Base losses over embeddings and class proxies, which the objective creates
# (`Objective.init_params`) and the trainer learns with the encoder.
PROXY_LOSSES: dict[str, ProxyLoss] = {
    'normalized_softmax': ProxyLoss(
        'normalized_softmax', _proxy.normalized_softmax_loss,
        'Zhai and Wu, BMVC 2019'),
    'cosface': ProxyLoss('cosface', _proxy.cosface_loss,
                         'Wang et al., CVPR 2018'),
    'arcface': ProxyLoss('arcface', _proxy.arcface_loss,
                         'Deng et al., CVPR 2019'),
    'proxy_anchor': ProxyLoss('proxy_anchor', _proxy.proxy_anchor_loss,
                              'Kim et al., CVPR 2020'),
}


def names() -> list[str]:
  """Every base loss's name, sorted: the pair, ranking and proxy losses.

  Examples:
    >>> from tcm_jax.losses import registry
    >>> registry.names()[:3]
    ['arcface', 'contrastive', 'cosface']
  """
  return sorted(set(LOSSES) | set(PROXY_LOSSES))


def get(name: str) -> PairLoss | ProxyLoss:
  """The base loss `name`; a clear error lists the names otherwise.

  Examples:
    >>> from tcm_jax.losses import registry
    >>> registry.get('arcface').hyperparameters()
    {'scale': 64.0, 'margin': 0.5}
  """
  if name in LOSSES:
    return LOSSES[name]
  if name in PROXY_LOSSES:
    return PROXY_LOSSES[name]
  if name == TCM.name:
    raise ValueError(
        "'tcm' is not a base loss: TCM is added to one, as "
        "objective(base, tcm={...}).")
  raise ValueError(
      f'unknown loss {name!r}; registered: {sorted(LOSSES)} and the proxy '
      f'losses {sorted(PROXY_LOSSES)}.')


def _frozen(hyper: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  """Hashable hyperparameters (an objective is a static argument of jit)."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in hyper.items()))


@dataclasses.dataclass(frozen=True)
class Objective:
  """`base + tcm`, each with bound hyperparameters; see `objective`.

  One type for the pair and ranking losses, which score a similarity matrix,
  and the proxy losses, which score embeddings against class proxies: those
  are the objective's own parameters (`init_params`), learned with the
  encoder, so that a trainer needs to know nothing of the kind of loss.
  """
  base: PairLoss | ProxyLoss
  frozen_base_hyper: tuple[tuple[str, Any], ...]
  frozen_tcm_hyper: tuple[tuple[str, Any], ...] | None

  @property
  def name(self) -> str:
    return self.base.name

  @property
  def uses_proxies(self) -> bool:
    """Whether the base loss needs class proxies (`init_params` makes them)."""
    return isinstance(self.base, ProxyLoss)

  @property
  def base_hyper(self) -> dict[str, Any]:
    return dict(self.frozen_base_hyper)

  @property
  def tcm_hyper(self) -> dict[str, Any] | None:
    return (None if self.frozen_tcm_hyper is None
            else dict(self.frozen_tcm_hyper))

  @property
  def tcm_margins(self) -> tuple[float, float] | None:
    """TCM's `(margin_pos, margin_neg)`, its defaults filled in; None
    without TCM."""
    if self.frozen_tcm_hyper is None:
      return None
    hyper = {**TCM.hyperparameters(), **self.tcm_hyper}
    return hyper['margin_pos'], hyper['margin_neg']

  def init_params(self, rng: jax.Array, num_classes: int,
                  dim: int) -> dict[str, jax.Array]:
    """The objective's own trainable parameters: `{}` for a pair loss,
    `{'proxies': [num_classes, dim]}` (standard normal) for a proxy loss.

    Examples:
      >>> import jax
      >>> from tcm_jax.losses import registry
      >>> params = registry.objective('cosface').init_params(
      ...     jax.random.key(0), 3, 4)
      >>> params['proxies'].shape, registry.objective('triplet').init_params(
      ...     jax.random.key(0), 3, 4)
      ((3, 4), {})
    """
    if not self.uses_proxies:
      return {}
    return {'proxies': jax.random.normal(rng, (num_classes, dim), jnp.float32)}

  def _proxies(self, params):
    """The proxy matrix: `params['proxies']`, or `params` itself."""
    if params is None:
      raise ValueError(f'loss {self.name!r} needs its class proxies: pass '
                       'the parameters init_params made.')
    return params['proxies'] if isinstance(params, Mapping) else params

  def _statistics(self, similarity, labels, ref_labels=None, **masks):
    base_stats, _ = self.base.split(self.base_hyper)
    stats = {'base': self.base.statistics_fn(
        similarity, labels, ref_labels, **base_stats, **masks)}
    if self.tcm_hyper is not None:
      tcm_stats, _ = TCM.split(self.tcm_hyper)
      stats['tcm'] = tcm_lib.tcm_statistics(
          similarity, labels, ref_labels, **tcm_stats, **masks)
    return stats

  def _reduce(self, stats) -> tuple[jax.Array, dict[str, jax.Array]]:
    _, base_reduce = self.base.split(self.base_hyper)
    parts = {'base': self.base.reduce_fn(stats['base'], **base_reduce)}
    total = parts['base']
    if self.tcm_hyper is not None:
      _, tcm_reduce = TCM.split(self.tcm_hyper)
      parts['tcm'] = tcm_lib.tcm_loss_from_statistics(stats['tcm'],
                                                      **tcm_reduce)
      parts.update(tcm_lib.tcm_diagnostics(stats['tcm']))
      total = total + parts['tcm']
    return total, parts

  def _with_tcm(self, base, tcm_statistics_fn):
    """`(loss, parts)`: `base` plus TCM from `tcm_statistics_fn(**hyper)`."""
    parts = {'base': base}
    total = base
    if self.frozen_tcm_hyper is not None:
      stats_hyper, reduce_hyper = TCM.split(self.tcm_hyper)
      stats = tcm_statistics_fn(**stats_hyper)
      parts['tcm'] = tcm_lib.tcm_loss_from_statistics(stats, **reduce_hyper)
      parts.update(tcm_lib.tcm_diagnostics(stats))
      total = total + parts['tcm']
    return total, parts

  def __call__(self, *args, **kwargs):
    """`(loss, parts)` on one device.

    A pair loss takes `(similarity, labels, ref_labels=None, **masks)`
    (masks as for `tcm_loss`); a proxy loss `(embeddings, labels, params,
    where=None)`, `params` holding the proxies (`init_params`'s dict, or
    the proxy matrix itself).
    """
    if self.uses_proxies:
      return self._proxy_loss(*args, **kwargs)
    return self._reduce(self._statistics(*args, **kwargs))

  def from_embeddings(self, embeddings, labels, ref_embeddings=None,
                      ref_labels=None, *,
                      precision: jax.lax.PrecisionLike = None, **masks):
    """`(loss, parts)` of a pair or ranking loss from embeddings, one device.

    The cosine similarity of `embeddings` (against `ref_embeddings`, or
    themselves) is computed here, after the padded rows (`where`/`ref_where`
    False) are set to 0: whatever they hold, NaN included, the value and the
    gradients are those of the unpadded batch and the padded rows get zero
    gradient. The similarity form, `objective(similarity, ...)`, promises
    this for its value and for gradients with respect to the similarity only:
    the backward pass of a similarity computed from NaN padded rows puts NaN
    in every embedding's gradient (see docs/tcm_loss.md, "Padding").

    Args:
      embeddings: `[q, dim]` embeddings (need not be normalised).
      labels: `[q]` integer class ids.
      ref_embeddings: optional `[r, dim]` references; default: the queries
        (self pairs excluded).
      ref_labels: `[r]` class ids, given exactly when `ref_embeddings` is.
      precision: precision of the similarity's matrix product.
      **masks: `where`, `ref_where`, `exclude_self`, `query_offset`, as for
        `tcm_loss`.

    Returns:
      `(loss, parts)`, as `objective(similarity, labels, ...)`.

    Raises:
      ValueError: a proxy loss (it scores embeddings against its proxies:
        call `objective(embeddings, labels, params)`), or references without
        their labels.

    Examples:
      >>> import jax.numpy as jnp
      >>> from tcm_jax.losses import registry
      >>> fn = registry.objective('smooth_ap', tcm={})
      >>> z = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [jnp.nan, 0.0]])
      >>> labels, where = jnp.array([0, 0, 1, 1]), jnp.arange(4) < 3
      >>> total, _ = fn.from_embeddings(z, labels, where=where)
      >>> bool(total == fn.from_embeddings(z[:3], labels[:3])[0])
      True
    """
    if self.uses_proxies:
      raise ValueError(
          f'loss {self.name!r} scores embeddings against its proxies: call '
          'objective(embeddings, labels, params), which takes embeddings '
          'already.')
    similarity = _pairs.similarity_of_embeddings(
        embeddings, ref_embeddings, ref_labels, where=masks.get('where'),
        ref_where=masks.get('ref_where'), precision=precision)
    return self(similarity, labels, ref_labels, **masks)

  def _proxy_loss(self, embeddings, labels, params, *, where=None):
    base = self.base.loss_fn(embeddings, labels, self._proxies(params),
                             where=where, **self.base_hyper)
    zeroed = _pairs.zero_padded_rows('where', embeddings, where)
    return self._with_tcm(base, lambda **hyper: tcm_lib.tcm_statistics(
        similarity_lib.cosine_similarity(zeroed), labels, where=where,
        **hyper))

  def sharded(self, embeddings: jax.Array, labels: jax.Array,
              params: Mapping[str, Any] | None = None, *, axis_name,
              where: jax.Array | None = None,
              precision: jax.lax.PrecisionLike = None):
    """`(loss, parts)` of the global batch, from inside `jax.shard_map`.

    Each device passes its rows; `params` holds the objective's parameters
    (`init_params`'s dict, or a mapping that holds its keys, such as a
    train state's params; a proxy loss also takes the proxy matrix itself),
    replicated. Values and gradients (under `check_vma`) equal those of one
    device holding the global batch: the pair losses and TCM gather the
    references once and add their statistics over devices.
    """
    if not self.uses_proxies:
      stats = _pairs.sharded_statistics(
          self._statistics, embeddings, labels, axis_name=axis_name,
          where=where, precision=precision)
      return self._reduce(stats)
    base = self.base.sharded(embeddings, labels, self._proxies(params),
                             axis_name=axis_name, where=where,
                             **self.base_hyper)
    return self._with_tcm(base, lambda **hyper: tcm_lib.sharded_tcm_statistics(
        embeddings, labels, axis_name=axis_name, where=where,
        precision=precision, **hyper))


def objective(base: str, *, tcm: dict[str, Any] | None = None,
              **base_hyper) -> Objective:
  """The training objective `base + TCM`, for any base loss.

  Args:
    base: a base loss's name (`names()`): a pair or ranking loss of
      `LOSSES`, or a proxy loss of `PROXY_LOSSES`.
    tcm: TCM's hyperparameters (`{}` for the paper's defaults), or None for
      the base loss alone.
    **base_hyper: the base loss's hyperparameters (defaults: its paper's).

  Returns:
    An `Objective`: `objective(...)` on one device (a similarity for a pair
    or ranking loss, embeddings for a proxy loss),
    `objective.from_embeddings(embeddings, labels, ...)` (a pair or ranking
    loss from embeddings, safe for NaN in padded rows) and
    `objective.sharded(embeddings, labels, params, axis_name=...)` return
    `(loss, parts)`, parts holding `base`, `tcm` and TCM's diagnostics.

  Raises:
    ValueError: an unknown loss or hyperparameter.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import registry
    >>> fn = registry.objective('contrastive', margin_neg=0.2, tcm={})
    >>> s = jnp.array([[1.0, 0.8, 0.3], [0.8, 1.0, -0.2], [0.3, -0.2, 1.0]])
    >>> total, parts = fn(s, jnp.array([0, 0, 1]))
    >>> bool(jnp.isclose(total, parts['base'] + parts['tcm']))
    True
    >>> import jax
    >>> fn = registry.objective('arcface', scale=16.0, tcm={})
    >>> z = jax.random.normal(jax.random.key(0), (8, 4))
    >>> params = fn.init_params(jax.random.key(1), 3, 4)
    >>> total, parts = fn(z, jnp.array([0, 0, 1, 1, 2, 2, 0, 1]), params)
    >>> fn.uses_proxies, sorted(parts)[:2]
    (True, ['base', 'hard_neg_fraction'])
  """
  loss = get(base)
  loss.split(base_hyper)  # unknown names fail here, not at trace time
  if tcm is not None:
    TCM.split(tcm)
  return Objective(loss, _frozen(base_hyper),
                   None if tcm is None else _frozen(tcm))


def proxy_objective(base: str, *, tcm: dict[str, Any] | None = None,
                    **base_hyper) -> Objective:
  """Deprecated: `objective(base, ...)` takes the proxy losses too.

  Examples:
    >>> import warnings
    >>> from tcm_jax.losses import registry
    >>> with warnings.catch_warnings():
    ...   warnings.simplefilter('ignore', DeprecationWarning)
    ...   registry.proxy_objective('arcface').uses_proxies
    True
  """
  warnings.warn(
      'tcm_jax.losses.proxy_objective is deprecated and will be removed in '
      'the next release: use tcm_jax.losses.objective, which takes the proxy '
      'losses too.', DeprecationWarning, stacklevel=2)
  if base not in PROXY_LOSSES:
    raise ValueError(
        f'unknown proxy loss {base!r}; registered: {sorted(PROXY_LOSSES)}.')
  return objective(base, tcm=tcm, **base_hyper)


def with_tcm_margins(objective_: Objective, margin_pos,
                     margin_neg) -> Objective:
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
