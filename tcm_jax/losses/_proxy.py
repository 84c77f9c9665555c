"""Proxy- and classification-based losses: one learned vector per class.

Each takes embeddings, integer labels in `[0, num_classes)` and the
`[num_classes, dim]` proxy (class-weight) matrix as an argument: the caller
owns the parameters. Similarities are cosines, in float32. Labels known at
call time are checked against the proxies (a `ValueError` names the labels
out of range); traced labels (inside `jax.jit`) cannot be, and one out of
range makes the loss NaN, so that a trainer's non-finite guard stops there.
Padded rows (`where` False) take no part and may hold any label, -1
included: padding is the way to leave a row out.

The classification losses (normalised softmax, CosFace, ArcFace) are means of
per-sample terms; Proxy-Anchor couples the batch through a sum over samples
per proxy, so its cross-device form sums those over the mesh first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import _array_checks
from tcm_jax import _checks
from tcm_jax import similarity as similarity_lib
from tcm_jax.losses import _pairs


def _known(x) -> np.ndarray | None:
  """`x` as a NumPy array, or None while it is traced."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def _check(embeddings, labels, proxies, where):
  """Shapes and dtypes; concrete labels are checked against the proxies.

  Returns:
    `(cosine, labels, weights, out_of_range)`: the `[n, classes]` cosines,
    the labels (0 in padded rows), the `[n]` float 0/1 row weights, and a
    scalar that is 0.0, or NaN when an unpadded row's label is outside
    `[0, num_classes)` (only possible for traced labels), for the loss to
    add.
  """
  embeddings = _array_checks.check_embeddings('embeddings', embeddings)
  dim = embeddings.shape[1]
  proxies = _array_checks.check_embeddings(
      'proxies', proxies, dim=dim,
      expected=f'[num_classes, {dim}] to match the embeddings')
  labels = _array_checks.as_labels('labels', labels, embeddings.shape[0],
                                   'rows')
  where = None if where is None else jnp.asarray(where)
  _array_checks.check_mask('where', where, embeddings.shape[0])
  host = _known(labels)
  if host is not None:  # labels known now (not traced): check them
    bad = (host < 0) | (host >= proxies.shape[0])
    padding = None if where is None else _known(where)
    if padding is not None:
      bad &= padding
    if bad.any():
      raise ValueError(
          f'labels must be class indices in [0, num_proxies) = '
          f'[0, {proxies.shape[0]}) (one row of proxies each); '
          f'{int(bad.sum())} are not, e.g. {host[bad][:5].tolist()}.')
  num_classes = proxies.shape[0]
  outside = ((labels < 0) | (labels >= num_classes))
  if where is not None:  # padded rows may hold any label, -1 included
    outside &= where
    labels = jnp.where(where, labels, 0)
  out_of_range = jnp.where(jnp.any(outside), jnp.nan, 0.0)
  embeddings = _pairs.zero_padded_rows('where', embeddings, where)
  weights = (jnp.ones(embeddings.shape[0], jnp.float32) if where is None
             else where.astype(jnp.float32))
  cosine = similarity_lib.cosine_similarity(embeddings, proxies)
  return cosine, labels, weights, out_of_range.astype(cosine.dtype)


def _weighted_mean(values, weights):
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _cross_entropy(logits, labels):
  log_probs = jax.nn.log_softmax(logits, axis=1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def normalized_softmax_loss(embeddings, labels, proxies, *,
                            temperature: float = 0.05,
                            where=None) -> jax.Array:
  """Softmax cross-entropy over cosine similarities to the class proxies.

  `logits = cos(z, W) / temperature`; mean over (unpadded) samples.

  Args:
    embeddings: `[n, dim]` embeddings.
    labels: `[n]` class indices in `[0, num_classes)`.
    proxies: `[num_classes, dim]` class weights (normalised inside).
    temperature: softmax temperature (the paper's 0.05), > 0.
    where: optional `[n]` boolean mask, False for padded rows.

  Returns:
    Scalar loss.

  References:
    Zhai, Wu, "Classification is a Strong Baseline for Deep Metric
    Learning", BMVC 2019.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = losses.normalized_softmax_loss(z, jnp.array([0]), w,
    ...                                       temperature=1.0)
    >>> print(f'{loss:.4f}')  # -log(e / (e + 1))
    0.3133
  """
  _checks.check_positive('temperature', temperature)
  cosine, labels, weights, out_of_range = _check(embeddings, labels, proxies,
                                                 where)
  return out_of_range + _weighted_mean(
      _cross_entropy(cosine / temperature, labels), weights)


def cosface_loss(embeddings, labels, proxies, *, scale: float = 64.0,
                 margin: float = 0.35, where=None) -> jax.Array:
  """CosFace (large margin cosine loss): `s * (cos - m)` for the true class.

  Args:
    embeddings: `[n, dim]` embeddings.
    labels: `[n]` class indices in `[0, num_classes)`.
    proxies: `[num_classes, dim]` class weights (normalised inside).
    scale: logit scale s (the paper's 64), > 0.
    margin: cosine margin m (the paper's 0.35), in [0, 1].
    where: optional `[n]` boolean mask, False for padded rows.

  Returns:
    Scalar loss, mean over samples.

  References:
    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
    Recognition", CVPR 2018.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = losses.cosface_loss(z, jnp.array([0]), w, scale=1.0, margin=1.0)
    >>> print(f'{loss:.4f}')  # logits 0 and 0: log 2
    0.6931
  """
  _checks.check_positive('scale', scale)
  _checks.check_in_range('margin', margin, 0.0, 1.0)
  cosine, labels, weights, out_of_range = _check(embeddings, labels, proxies,
                                                 where)
  target = jax.nn.one_hot(labels, cosine.shape[1], dtype=cosine.dtype)
  logits = scale * (cosine - margin * target)
  return out_of_range + _weighted_mean(_cross_entropy(logits, labels), weights)


def arcface_loss(embeddings, labels, proxies, *, scale: float = 64.0,
                 margin: float = 0.5, where=None) -> jax.Array:
  """ArcFace (additive angular margin): `s * cos(theta + m)` for the true class.

  As in the authors' implementation, once `theta + m` would pass pi the
  target logit continues as `cos(theta) - m * sin(m)`, which keeps it
  decreasing in theta.

  Args:
    embeddings: `[n, dim]` embeddings.
    labels: `[n]` class indices in `[0, num_classes)`.
    proxies: `[num_classes, dim]` class weights (normalised inside).
    scale: logit scale s (the paper's 64), > 0.
    margin: angular margin m in radians (the paper's 0.5), in [0, pi/2].
    where: optional `[n]` boolean mask, False for padded rows.

  Returns:
    Scalar loss, mean over samples.

  References:
    Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for
    Deep Face Recognition", CVPR 2019.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = losses.arcface_loss(z, jnp.array([0]), w, scale=1.0,
    ...                            margin=jnp.pi / 2)
    >>> print(f'{loss:.4f}')  # cos(0 + pi/2) = 0 against cos(pi/2) = 0
    0.6931
  """
  _checks.check_positive('scale', scale)
  _checks.check_in_range('margin', margin, 0.0, math.pi / 2)
  cosine, labels, weights, out_of_range = _check(embeddings, labels, proxies,
                                                 where)
  target = jax.nn.one_hot(labels, cosine.shape[1], dtype=cosine.dtype)
  cos_t = jnp.sum(cosine * target, axis=1)
  # sin(theta) with a floor: its gradient is infinite at cos = +-1.
  sin_t = jnp.sqrt(jnp.maximum(1.0 - cos_t * cos_t, 1e-12))
  shifted = cos_t * math.cos(margin) - sin_t * math.sin(margin)
  fallback = cos_t - margin * math.sin(margin)
  target_logit = jnp.where(cos_t > math.cos(math.pi - margin), shifted,
                           fallback)
  logits = scale * (cosine + target * (target_logit - cos_t)[:, None])
  return out_of_range + _weighted_mean(_cross_entropy(logits, labels), weights)


class ProxyAnchorStatistics(NamedTuple):
  """Per-proxy sums over samples (add across devices before the log).

  Each sum is of `exp(x - shift)`, the shift being the largest exponent `x`
  of that proxy (at least 0), the same on every device, so nothing overflows
  for any `alpha`.
  """
  positive_sums: jax.Array  # [classes] sum over positives of exp(x - shift)
  positive_shift: jax.Array  # [classes]
  negative_sums: jax.Array  # [classes] sum over negatives of exp(x - shift)
  negative_shift: jax.Array  # [classes]
  has_positive: jax.Array  # [classes] samples of that class in the batch


def _shifted_sums(exponents, mask, axis_name):
  """Per-proxy sums of exp(exponent - shift) over masked samples, and shift."""
  largest = jnp.max(jnp.where(mask > 0, exponents, -jnp.inf), axis=0,
                    initial=-jnp.inf)  # an empty batch: no sample, shift 0
  shift = jax.lax.stop_gradient(jnp.maximum(largest, 0.0))
  if axis_name is not None:
    shift = jax.lax.pmax(shift, axis_name)
  safe = jnp.where(mask > 0, exponents - shift, -jnp.inf)
  return jnp.sum(jnp.exp(safe), axis=0), shift


def proxy_anchor_statistics(embeddings, labels, proxies, *,
                            alpha: float = 32.0, margin: float = 0.1,
                            where=None, axis_name=None) -> ProxyAnchorStatistics:
  """The per-proxy sums of `proxy_anchor_loss`.

  With `axis_name` (inside `jax.shard_map`), the shifts are shared over the
  mesh so that the sums can be added across devices.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> stats = advanced.proxy_anchor_statistics(z, jnp.array([0]), w)
    >>> print(stats.has_positive)
    [1. 0.]
  """
  _checks.check_positive('alpha', alpha)
  _checks.check_in_range('margin', margin, 0.0, 1.0)
  cosine, labels, weights, out_of_range = _check(embeddings, labels, proxies,
                                                 where)
  target = jax.nn.one_hot(labels, cosine.shape[1], dtype=cosine.dtype)
  positive = target * weights[:, None]
  negative = (1.0 - target) * weights[:, None]
  positive_sums, positive_shift = _shifted_sums(
      -alpha * (cosine - margin), positive, axis_name)
  negative_sums, negative_shift = _shifted_sums(
      alpha * (cosine + margin), negative, axis_name)
  return ProxyAnchorStatistics(
      # NaN for a traced label out of range: summed over devices, it
      # reaches every device's loss.
      positive_sums=positive_sums + out_of_range,
      positive_shift=positive_shift,
      negative_sums=negative_sums, negative_shift=negative_shift,
      has_positive=jnp.sum(positive, axis=0))


def _log1p(sums, shift):
  """`log(1 + sum exp(x))` from the sum of `exp(x - shift)`."""
  return shift + jnp.log(jnp.exp(-shift) + sums)


def proxy_anchor_loss_from_statistics(
    stats: ProxyAnchorStatistics) -> jax.Array:
  """`proxy_anchor_loss` from (possibly cross-device summed) per-proxy sums.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.losses import advanced
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> stats = advanced.proxy_anchor_statistics(z, jnp.array([0]), w,
    ...                                          alpha=1.0, margin=0.0)
    >>> print(f'{advanced.proxy_anchor_loss_from_statistics(stats):.4f}')
    0.6598
  """
  with_positive = jnp.minimum(stats.has_positive, 1.0)
  positive = (jnp.sum(with_positive
                      * _log1p(stats.positive_sums, stats.positive_shift))
              / jnp.maximum(jnp.sum(with_positive), 1.0))
  negative = jnp.mean(_log1p(stats.negative_sums, stats.negative_shift))
  return positive + negative


def proxy_anchor_loss(embeddings, labels, proxies, *, alpha: float = 32.0,
                      margin: float = 0.1, where=None) -> jax.Array:
  """Proxy-Anchor: each proxy pulls its samples and pushes the others.

  .. math::

    L = \\frac{1}{|P^+|} \\sum_{p \\in P^+} \\log\\left(1 + \\sum_{x \\in X_p^+}
        e^{-\\alpha (s(x, p) - \\delta)}\\right)
      + \\frac{1}{|P|} \\sum_{p \\in P} \\log\\left(1 + \\sum_{x \\in X_p^-}
        e^{\\alpha (s(x, p) + \\delta)}\\right)

  with `P+` the proxies of the classes in the batch.

  Args:
    embeddings: `[n, dim]` embeddings.
    labels: `[n]` class indices in `[0, num_classes)`.
    proxies: `[num_classes, dim]` proxies (normalised inside).
    alpha: scale (the paper's 32), > 0.
    margin: delta (the paper's 0.1), in [0, 1].
    where: optional `[n]` boolean mask, False for padded rows.

  Returns:
    Scalar loss.

  References:
    Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning",
    CVPR 2020.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax import losses
    >>> z, w = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss = losses.proxy_anchor_loss(z, jnp.array([0]), w, alpha=1.0,
    ...                                 margin=0.0)
    >>> # Proxy 0 pulls its sample: log(1 + e^-1). Pushing: proxy 0 has no
    >>> # negative (log 1), proxy 1 one at cos 0 (log 2); mean of the two.
    >>> print(f'{loss:.4f}')
    0.6598
  """
  return proxy_anchor_loss_from_statistics(proxy_anchor_statistics(
      embeddings, labels, proxies, alpha=alpha, margin=margin, where=where))


def sharded_proxy_anchor_statistics(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    alpha: float = 32.0,
    margin: float = 0.1,
) -> ProxyAnchorStatistics:
  """Proxy-Anchor's per-proxy sums over the global batch, inside `shard_map`.

  Each device sums over its own samples with shifts shared over the mesh,
  and the sums are added over `axis_name`: the result is the same on every
  device and equals `proxy_anchor_statistics` of the whole batch on one
  device (up to float rounding).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` class indices in `[0, num_classes)`.
    proxies: the `[num_classes, dim]` proxies, replicated.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    alpha: see `proxy_anchor_loss`.
    margin: see `proxy_anchor_loss`.

  Returns:
    `ProxyAnchorStatistics` of the global batch.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> from tcm_jax.losses import advanced
    >>> mesh = Mesh(jax.devices(), ('data',))  # any count that divides 8
    >>> z = jax.random.normal(jax.random.key(0), (8, 16))
    >>> w = jax.random.normal(jax.random.key(1), (4, 16))
    >>> stats = jax.jit(jax.shard_map(
    ...     lambda z, y, w: advanced.sharded_proxy_anchor_statistics(
    ...         z, y, w, axis_name='data'),
    ...     mesh=mesh, in_specs=(P('data'), P('data'), P()), out_specs=P()))(
    ...     z, jnp.array([0, 0, 1, 1, 2, 2, 3, 3]), w)
    >>> print(stats.has_positive)  # two samples of each class
    [2. 2. 2. 2.]
  """
  stats = proxy_anchor_statistics(embeddings, labels, proxies, alpha=alpha,
                                  margin=margin, where=where,
                                  axis_name=axis_name)
  return stats._replace(**{
      name: jax.lax.psum(getattr(stats, name), axis_name)
      for name in ('positive_sums', 'negative_sums', 'has_positive')})


@_pairs.sharded_form('proxy_anchor_loss', proxies=True)
def sharded_proxy_anchor_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    axis_name,
    where: jax.Array | None = None,
    alpha: float = 32.0,
    margin: float = 0.1,
) -> jax.Array:
  """`proxy_anchor_loss` of the global batch, from inside `jax.shard_map`.

  The per-proxy sums are added over `axis_name` before the logarithms, so
  value and gradients equal one device holding the global batch (proxies
  replicated; gradients inside `shard_map` need `check_vma=True`).

  Args:
    embeddings: this device's `[b, dim]` embeddings.
    labels: this device's `[b]` class indices in `[0, num_classes)`.
    proxies: the `[num_classes, dim]` proxies, replicated.
    axis_name: the mesh axis name (or tuple of names) the batch is sharded on.
    where: optional `[b]` boolean mask, False for padded rows.
    alpha: see `proxy_anchor_loss`.
    margin: see `proxy_anchor_loss`.

  Returns:
    Scalar loss, replicated over `axis_name`.
  """
  return proxy_anchor_loss_from_statistics(sharded_proxy_anchor_statistics(
      embeddings, labels, proxies, axis_name=axis_name, where=where,
      alpha=alpha, margin=margin))
