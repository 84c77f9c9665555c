"""ViT-Ti/S/B backbones (pre-norm, CLS token, final norm), in Flax NNX.

Attribute names follow timm's `VisionTransformer` (`cls_token`, `pos_embed`,
`patch_embed`, `blocks[i].attn.qkv`, `blocks[i].mlp.fc1`, `norm`), with the
query, key and value projections fused into one `qkv` layer as timm stores them;
`tcm_jax.models.pretrained` reads timm and big_vision/AugReg weights into it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tcm_jax.models._layers import check_images


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """Width, depth and attention heads of a ViT size (MLP width is 4x)."""
  width: int
  depth: int
  num_heads: int


VITS = {
    'vit_ti': ViTArch(width=192, depth=12, num_heads=3),
    'vit_s': ViTArch(width=384, depth=12, num_heads=6),
    'vit_b': ViTArch(width=768, depth=12, num_heads=12),
}

_LAYER_NORM_EPSILON = 1e-6  # timm's and big_vision's ViTs
_trunc_normal = nnx.initializers.truncated_normal(0.02)


def _linear(in_features, out_features, *, dtype, rngs):
  return nnx.Linear(in_features, out_features, dtype=dtype,
                    kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)


def _layer_norm(num_features, *, dtype, rngs):
  return nnx.LayerNorm(num_features, epsilon=_LAYER_NORM_EPSILON, dtype=dtype,
                       rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused query/key/value projection."""

  def __init__(self, width, num_heads, *, dtype, rngs):
    if width % num_heads:
      raise ValueError(
          f'width {width} is not divisible by num_heads {num_heads}.')
    self.num_heads = num_heads
    self.qkv = _linear(width, 3 * width, dtype=dtype, rngs=rngs)
    self.proj = _linear(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    batch, tokens, width = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads,
                              width // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = jax.nn.dot_product_attention(q, k, v)
    return self.proj(y.reshape(batch, tokens, width))


class Mlp(nnx.Module):
  """Two linear layers with an exact (erf) GELU, as timm.

  The original AugReg / big_vision Flax code uses the tanh approximation; timm
  loads those weights with the exact GELU too, and so does this module (the
  difference is below 1e-3 of an activation).
  """

  def __init__(self, width, hidden, *, dtype, rngs):
    self.fc1 = _linear(width, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(hidden, width, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, width, num_heads, *, dtype, rngs):
    self.norm1 = _layer_norm(width, dtype=dtype, rngs=rngs)
    self.attn = Attention(width, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(width, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(width, 4 * width, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
  """A ViT backbone: images `[batch, size, size, channels]` to normalised tokens.

  Args:
    name: 'vit_ti', 'vit_s' or 'vit_b'.
    patch_size: 16 for 224-pixel images; 4 for 32-pixel ones.
    image_size: the input resolution; position embeddings are learned for
      its `(image_size // patch_size)**2` patches plus the CLS token.
    in_channels: image channels.
    dtype: compute dtype (e.g. bfloat16); parameters stay float32.
    rngs: `nnx.Rngs` for the initial weights.
  """

  def __init__(self, name: str = 'vit_b', *, patch_size: int = 16,
               image_size: int = 224, in_channels: int = 3,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if name not in VITS:
      raise ValueError(
          f'Unknown ViT {name!r}; expected one of {sorted(VITS)}.')
    if patch_size < 1 or image_size % patch_size:
      raise ValueError(
          f'image_size ({image_size}) must be a multiple of patch_size '
          f'({patch_size}).')
    arch = VITS[name]
    self.arch = name
    self.patch_size = patch_size
    self.in_channels = in_channels
    self.image_size = image_size
    self.num_features = arch.width
    num_patches = (image_size // patch_size)**2
    self.patch_embed = nnx.Conv(
        in_channels, arch.width, (patch_size, patch_size),
        (patch_size, patch_size), padding='VALID', dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, arch.width), jnp.float32))
    self.pos_embed = nnx.Param(_trunc_normal(
        rngs.params(), (1, num_patches + 1, arch.width), jnp.float32))
    self.blocks = nnx.List([
        Block(arch.width, arch.num_heads, dtype=dtype, rngs=rngs)
        for _ in range(arch.depth)])
    self.norm = _layer_norm(arch.width, dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.typing.ArrayLike, *, train: bool = False
               ) -> jax.Array:
    """Tokens after the final norm, `[batch, 1 + patches, width]`; CLS first."""
    del train  # No dropout or batch statistics.
    x = check_images(images, in_channels=self.in_channels,
                     image_size=self.image_size)
    x = self.patch_embed(x)
    batch, _, _, width = x.shape
    x = x.reshape(batch, -1, width)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype),
                           (batch, 1, width))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)
