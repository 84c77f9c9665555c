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

  Whatever their scale: each row is first scaled by the power of two that
  brings its largest magnitude into [0.5, 1), so that neither its squared
  norm overflows (rows of 1e19 in float32) nor underflows (rows of 1e-25),
  and every finite non-zero row comes out with unit norm (rows of ordinary
  magnitude get exactly the values of the plain `x / |x|`); the gradient is that of `x / |x|`, finite at any scale. A zero
  row stays zero, with gradient `1 / eps` (the norm is clamped at `eps`, as
  `torch.nn.functional.normalize` does; unlike it, a non-zero row of norm
  below `eps` also comes out with unit norm, since it is scaled up first). A
  row holding NaN or an infinity gives NaN.

  Args:
    x: embeddings, `[n, dim]`.
    eps: smallest norm divided by, once each row is scaled to a largest
      magnitude in [0.5, 1) (so a norm of at least 0.5): below 0.5 (the
      default is 1e-12) only zero rows reach it.

  Returns:
    `[n, dim]` array of dtype at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from tcm_jax.similarity import l2_normalize
    >>> print(l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])))
    [[0.6 0.8]
     [0.  0. ]]
    >>> print(l2_normalize(jnp.array([[3e30, 4e30], [3e-30, -4e-30]])).round(6))
    [[ 0.6  0.8]
     [ 0.6 -0.8]]
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.number):
    raise TypeError(f'embeddings must be numeric, got dtype {x.dtype}.')
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  # Scaling by a constant changes neither the direction nor (x / |x| being
  # homogeneous of degree 0) the gradient, so the scale is not differentiated.
  # It is the power of two that brings the largest magnitude into [0.5, 1):
  # exact, so rows of ordinary magnitude get bit for bit the values of the
  # unscaled `x / |x|`. Applied in two halves, each a normal float32 (a
  # single 2**-127 for rows near 1e38 would be subnormal, which XLA flushes
  # to zero).
  largest = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
  _, exponent = jnp.frexp(largest)
  one = jnp.ones_like(largest)
  scaled = ((x * jnp.ldexp(one, -(exponent // 2)))
            * jnp.ldexp(one, exponent // 2 - exponent))
  squared_norm = jnp.sum(scaled * scaled, axis=-1, keepdims=True)
  return scaled * jax.lax.rsqrt(jnp.maximum(squared_norm, eps * eps))


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
    eps: `l2_normalize`'s clamp of the (scaled) norm; only zero rows reach
      the default.
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
