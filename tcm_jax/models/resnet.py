"""ResNet-18/34/50 backbones (torchvision / timm layout, ResNet v1.5), in Flax NNX.

Attribute names follow timm's (`conv1`, `bn1`, `layer1[0].conv2`,
`layer2[0].downsample.conv`, ...), so its ImageNet weights map onto the modules
name by name (`tcm_jax.models.pretrained`). Padding is explicit and symmetric,
as in PyTorch, so the features match timm's to float tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tcm_jax import _checks
from tcm_jax.models._layers import batch_norm
from tcm_jax.models._layers import check_images


@dataclasses.dataclass(frozen=True)
class ResNetArch:
  """Block type and blocks per stage of a ResNet depth."""
  bottleneck: bool
  stage_sizes: tuple[int, int, int, int]


RESNETS = {
    'resnet18': ResNetArch(bottleneck=False, stage_sizes=(2, 2, 2, 2)),
    'resnet34': ResNetArch(bottleneck=False, stage_sizes=(3, 4, 6, 3)),
    'resnet50': ResNetArch(bottleneck=True, stage_sizes=(3, 4, 6, 3)),
}

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'), as torchvision.
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(in_features, out_features, kernel, stride, *, dtype, rngs):
  pad = kernel // 2
  return nnx.Conv(
      in_features, out_features, (kernel, kernel), (stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
      kernel_init=_conv_init, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class _Norm:
  """How every BatchNorm of one network is built."""
  frozen: bool
  axis_name: str | None
  dtype: Any

  def __call__(self, num_features, *, rngs, zero_init=False):
    return batch_norm(num_features, frozen=self.frozen,
                      axis_name=self.axis_name, dtype=self.dtype, rngs=rngs,
                      zero_init=zero_init)


class Downsample(nnx.Module):
  """The 1x1 strided projection of a shortcut (timm's `downsample.0/.1`)."""

  def __init__(self, in_features, out_features, stride, *, norm, dtype, rngs):
    self.conv = _conv(in_features, out_features, 1, stride, dtype=dtype,
                      rngs=rngs)
    self.bn = norm(out_features, rngs=rngs)

  def __call__(self, x, *, train):
    return self.bn(self.conv(x), use_running_average=not train)


def _shortcut(in_features, out_features, stride, *, norm, dtype, rngs):
  """A projection where the block changes shape; None for the identity."""
  if stride == 1 and in_features == out_features:
    return None
  return Downsample(in_features, out_features, stride, norm=norm, dtype=dtype,
                    rngs=rngs)


def _add_shortcut(downsample, x, y, *, train):
  shortcut = x if downsample is None else downsample(x, train=train)
  return jax.nn.relu(y + shortcut)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  expansion = 1

  def __init__(self, in_features, planes, stride, *, norm, dtype, rngs):
    out_features = planes * self.expansion
    self.conv1 = _conv(in_features, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = norm(planes, rngs=rngs)
    self.conv2 = _conv(planes, out_features, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = norm(out_features, rngs=rngs, zero_init=True)
    self.downsample = _shortcut(in_features, out_features, stride, norm=norm,
                                dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    return _add_shortcut(self.downsample, x, y, train=train)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand (ResNet-50)."""
  expansion = 4

  def __init__(self, in_features, planes, stride, *, norm, dtype, rngs):
    out_features = planes * self.expansion
    self.conv1 = _conv(in_features, planes, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = norm(planes, rngs=rngs)
    self.conv2 = _conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = norm(planes, rngs=rngs)
    self.conv3 = _conv(planes, out_features, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = norm(out_features, rngs=rngs, zero_init=True)
    self.downsample = _shortcut(in_features, out_features, stride, norm=norm,
                                dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    return _add_shortcut(self.downsample, x, y, train=train)


def _max_pool_3x3_stride_2(x):
  # A Python-scalar -inf: JAX then recognises the max monoid, which has a
  # gradient (an array init value makes a generic, non-differentiable reduction).
  return jax.lax.reduce_window(
      x, -float('inf'), jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
      ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet(nnx.Module):
  """A ResNet backbone: images `[batch, height, width, channels]` to a feature map.

  Args:
    name: 'resnet18', 'resnet34' or 'resnet50'.
    width: multiplier on the stage widths (64, 128, 256, 512); 1.0 is the
      published network.
    small_images: a 3x3 stride-1 stem without max-pooling, for 8x8 to 32x32
      inputs (the 7x7 stride-2 stem and pooling would leave almost nothing of
      them); pretrained weights then load into every layer but `conv1` and
      `bn1`.
    frozen_batch_norm: normalise with fixed statistics and affine weights
      (`FrozenBatchNorm`), as the paper fine-tunes ResNet-50.
    batch_norm_axis_name: when training BatchNorm under `jax.shard_map`, the
      mesh axis its batch statistics are averaged over (synchronised
      BatchNorm); None for per-call statistics (global under plain `jax.jit`).
    in_channels: image channels.
    dtype: compute dtype (e.g. bfloat16); parameters stay float32.
    rngs: `nnx.Rngs` for the initial weights.
  """

  def __init__(self, name: str = 'resnet50', *, width: float = 1.0,
               small_images: bool = False, frozen_batch_norm: bool = False,
               batch_norm_axis_name: str | None = None, in_channels: int = 3,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if name not in RESNETS:
      raise ValueError(
          f'Unknown ResNet {name!r}; expected one of {sorted(RESNETS)}.')
    _checks.check_number('width', width, above=0, finite=True)
    arch = RESNETS[name]
    block = Bottleneck if arch.bottleneck else BasicBlock
    norm = _Norm(frozen_batch_norm, batch_norm_axis_name, dtype)
    self.arch = name
    self.width = width
    self.in_channels = in_channels
    self.small_images = small_images

    stem = max(1, round(64 * width))
    self.conv1 = _conv(in_channels, stem, 3 if small_images else 7,
                       1 if small_images else 2, dtype=dtype, rngs=rngs)
    self.bn1 = norm(stem, rngs=rngs)
    features = stem
    for stage, num_blocks in enumerate(arch.stage_sizes):
      planes = max(1, round(64 * 2**stage * width))
      blocks = []
      for i in range(num_blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(block(features, planes, stride, norm=norm, dtype=dtype,
                            rngs=rngs))
        features = planes * block.expansion
      setattr(self, f'layer{stage + 1}', nnx.List(blocks))
    self.num_features = features

  def __call__(self, images: jax.typing.ArrayLike, *, train: bool = False
               ) -> jax.Array:
    """The last stage's feature map, `[batch, h, w, num_features]`."""
    x = check_images(images, in_channels=self.in_channels)
    x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
    if not self.small_images:
      x = _max_pool_3x3_stride_2(x)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x, train=train)
    return x
