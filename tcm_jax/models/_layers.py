"""Pieces the encoders share: input checks, dtypes, BatchNorm (synchronised or frozen)."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tcm_jax import _checks

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def as_dtype(dtype: Any, *, name: str = 'dtype') -> jnp.dtype:
  """A floating compute dtype from a name ('bfloat16') or a dtype."""
  if isinstance(dtype, str):
    return jnp.dtype(DTYPES[_checks.check_choice(name, dtype, sorted(DTYPES))])
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'{name} must be a floating dtype, got {dtype}.')
  return dtype


def check_images(images: jax.Array, *, in_channels: int,
                 image_size: int | None = None) -> jax.Array:
  """`images` as a float `[batch, height, width, channels]` array, or a clear error."""
  images = jnp.asarray(images)
  expected = (f'[batch, height, width, {in_channels}]' if image_size is None
              else f'[batch, {image_size}, {image_size}, {in_channels}]')
  if images.ndim == 4 and images.shape[0] == 0:
    raise ValueError(
        f'images must hold at least one image, got shape {images.shape}.')
  if images.ndim != 4:
    raise ValueError(
        f'images must be a rank-4 {expected} (NHWC) array, got rank '
        f'{images.ndim} with shape {images.shape}.')
  if images.shape[-1] != in_channels:
    raise ValueError(
        f'images must have {in_channels} channels in the last axis (NHWC), '
        f'expected {expected}, got shape {images.shape}.')
  if image_size is not None and images.shape[1:3] != (image_size, image_size):
    raise ValueError(
        f'images must be {image_size}x{image_size} for this model (its '
        f'position embeddings are fixed), expected {expected}, got shape '
        f'{images.shape}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f'images must be floating point (normalised pixels), got dtype '
        f'{images.dtype}.')
  return images


class Frozen(nnx.Variable):
  """A weight that no optimizer sees: it is not an `nnx.Param`."""


class FrozenBatchNorm(nnx.Module):
  """BatchNorm with fixed statistics and affine weights (the paper's ResNet recipe).

  Always normalises with the stored `mean` and `var`, in training too. The
  affine `scale` and `bias` are `Frozen` variables, not `nnx.Param`s, so neither
  gradients nor weight decay reach them; the statistics are `nnx.BatchStat`s
  that this layer never updates. Attribute names match `nnx.BatchNorm`, so
  pretrained weights load the same way into either.
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-5,
               dtype: Any = None):
    self.scale = Frozen(jnp.ones((num_features,), jnp.float32))
    self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.epsilon = epsilon
    self.dtype = dtype

  def __call__(self, x: jax.Array, use_running_average: bool | None = None
               ) -> jax.Array:
    del use_running_average  # Frozen: the stored statistics, always.
    multiplier = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.epsilon)
    offset = self.bias[...] - self.mean[...] * multiplier
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * multiplier.astype(dtype) + offset.astype(dtype)


def batch_norm(num_features: int, *, frozen: bool, axis_name: str | None,
               dtype: Any, rngs: nnx.Rngs, zero_init: bool = False):
  """A BatchNorm layer: frozen, or training with statistics pmean'd over `axis_name`.

  The momentum (0.9, PyTorch's 0.1) and epsilon (1e-5) are those of torchvision
  and timm ResNets; unlike PyTorch, Flax updates the running variance with the
  biased batch variance (a relative difference of 1/n for n values per channel).
  `zero_init` starts a training layer's scale at 0, for the last norm of a
  residual branch (each block then starts as the identity); a frozen layer
  ignores it, as a frozen zero scale would cut its branch off for good.
  """
  if frozen:
    return FrozenBatchNorm(num_features, dtype=dtype)
  scale_init = (nnx.initializers.zeros if zero_init
                else nnx.initializers.ones)
  return nnx.BatchNorm(
      num_features, momentum=0.9, epsilon=1e-5, dtype=dtype,
      axis_name=axis_name, scale_init=scale_init, rngs=rngs)
