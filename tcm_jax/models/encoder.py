"""The embedding head and the encoder: backbone, pooling, LayerNorm, Linear, L2 norm."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tcm_jax import _checks
from tcm_jax.similarity import l2_normalize


class GeM(nnx.Module):
  """Generalised-mean pooling over the spatial axes, with a learnable exponent p.

  `(mean(max(x, eps)**p))**(1/p)` per channel, computed in float32 and in the
  log domain, so that a dead channel (all zero after ReLU) stays finite for any
  p instead of underflowing to 0 and a NaN gradient: p = 1 is average pooling,
  large p approaches max pooling. The exponent used is clamped at 1 from below,
  so that training cannot drive it to 0, where 1/p diverges (exclude `p` from
  weight decay, as the norms and biases, or decay will hold it there).

  References:
    Radenovic, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
    annotation", TPAMI 2018.
  """

  def __init__(self, p: float = 3.0, *, eps: float = 1e-6):
    p = _checks.check_number('GeM p', p, at_least=1, finite=True)
    self.p = nnx.Param(jnp.asarray(p, jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[batch, h, w, channels]` to `[batch, channels]`."""
    p = jnp.maximum(self.p[...], 1.0)
    log_x = jnp.log(jnp.maximum(x.astype(jnp.float32), self.eps))
    count = x.shape[1] * x.shape[2]
    log_mean = jax.nn.logsumexp(p * log_x, axis=(1, 2)) - jnp.log(count)
    return jnp.exp(log_mean / p)


class EmbeddingHead(nnx.Module):
  """Pooled features -> LayerNorm -> Linear -> L2-normalised float32 embedding.

  Args:
    num_features: width of the backbone's features.
    embedding_size: output dimension (512 in the paper).
    pool: 'gem' for a convolutional feature map `[batch, h, w, c]`, 'cls' for
      the first token of `[batch, tokens, c]`.
    gem_p: initial GeM exponent.
    dtype: compute dtype of the Linear layer; the normalisation, and so the
      similarity computed from the embeddings, is float32.
    rngs: `nnx.Rngs` for the initial weights.
  """

  def __init__(self, num_features: int, embedding_size: int = 512, *,
               pool: str = 'gem', gem_p: float = 3.0, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    _checks.check_choice('pool', pool, ('gem', 'cls'))
    embedding_size = _checks.check_int('embedding_size', embedding_size, 1)
    self.pool = pool
    self.gem = GeM(gem_p) if pool == 'gem' else None
    self.norm = nnx.LayerNorm(num_features, dtype=jnp.float32, rngs=rngs)
    self.proj = nnx.Linear(num_features, embedding_size, dtype=dtype,
                           rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    pooled = self.gem(features) if self.gem is not None else features[:, 0]
    z = self.proj(self.norm(pooled.astype(jnp.float32)))
    return l2_normalize(z.astype(jnp.float32))


class Encoder(nnx.Module):
  """A backbone and its embedding head: images to unit-norm float32 embeddings.

  `encoder(images, train=...)` gives `[batch, embedding_size]` embeddings;
  `encoder.backbone(images)` the features before the head (a ResNet's last
  feature map, a ViT's normalised tokens). Build one with
  `tcm_jax.models.create_encoder`.
  """

  def __init__(self, backbone: nnx.Module, head: EmbeddingHead):
    self.backbone = backbone
    self.head = head

  def __call__(self, images: jax.typing.ArrayLike, *, train: bool = False
               ) -> jax.Array:
    return self.head(self.backbone(images, train=train))
