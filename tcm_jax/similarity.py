"""Cosine similarity and L2 normalisation, in float32 whatever the dtype.

The losses, the metrics and the encoders' embedding head share these two
functions; `tcm_jax.cosine_similarity` is the same function as
`tcm_jax.similarity.cosine_similarity`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tcm_jax import _array_checks


def l2_normalize(x: jax.typing.ArrayLike, *, eps: float = 1e-12) -> jax.Array:
  """Rows of `x` scaled to unit L2 norm, computed in at least float32.

  The norm is clamped at `eps` (as `torch.nn.functional.normalize` does), so a
  zero row stays zero and its gradient is finite.

  Args:
    x: embeddings, `[n, dim]`.
    eps: smallest norm divided by.

  Returns:
    `[n, dim]` array of dtype at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.similarity import l2_normalize
    >>> print(l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])))
    [[0.6 0.8]
     [0.  0. ]]
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.number):
    raise TypeError(f'embeddings must be numeric, got dtype {x.dtype}.')
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, eps * eps))


def cosine_similarity(
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike | None = None,
    *,
    eps: float = 1e-12,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """Cosine similarity matrix `S[i, j] = <x_i, y_j> / (|x_i| |y_j|)`.

  Inputs of any floating dtype (bfloat16 included) are upcast before the
  product, so the similarity is float32 (float64 if an input is float64). Zero
  rows have similarity 0 to everything; see `l2_normalize`.

  Args:
    x: query embeddings, `[q, dim]`.
    y: reference embeddings, `[r, dim]`; defaults to `x`.
    eps: smallest norm divided by.
    precision: passed to the matrix product (on TPU, the default computes
      float32 products in bfloat16 passes; use `jax.lax.Precision.HIGHEST`
      for full float32 accuracy there).

  Returns:
    `[q, r]` similarity matrix.

  Examples:
    >>> import jax.numpy as jnp
    >>> import tcm_jax
    >>> z = jnp.array([[1.0, 0.0], [1.0, 1.0]], dtype=jnp.bfloat16)
    >>> s = tcm_jax.cosine_similarity(z)
    >>> s.dtype
    dtype('float32')
    >>> print(s.round(4))
    [[1.     0.7071]
     [0.7071 1.    ]]
  """
  x = _array_checks.check_embeddings('x', x, expected='2-D [n, dim] embeddings')
  xn = l2_normalize(x, eps=eps)
  if y is None:
    yn = xn
  else:
    y = _array_checks.check_embeddings(
        'y', y, dim=x.shape[1],
        expected=f'2-D [m, {x.shape[1]}] embeddings to match x of shape '
        f'{x.shape}')
    yn = l2_normalize(y, eps=eps)
  return jnp.matmul(xn, yn.T, precision=precision)
