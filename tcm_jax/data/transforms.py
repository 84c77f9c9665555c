"""Per-sample image transforms: the paper's training and evaluation recipe.

These run on the host, one decoded image at a time, inside the data-loading
workers and before batching, so they use NumPy and Pillow only.

An image is a `uint8` array of shape `[H, W]` (grayscale) or `[H, W, C]` with
`C` in {1, 3}. The geometric transforms (`random_resized_crop`, `resize`,
`resize_shorter`, `center_crop`, `horizontal_flip`, `translate`) return a
`uint8` image in the input's layout; `normalize` ends every pipeline with a
`float32` `[H, W, channels]` array. Resampling is Pillow's bilinear filter,
which widens its support when it shrinks an image (antialiasing), exactly as
torchvision's PIL path does: `EvalTransform` equals torchvision's
`Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)`, transposed
to HWC.

Randomness comes only from the `np.random.Generator` passed in, never from
global state, so a pipeline that seeds one generator per (seed, step, record)
is reproducible. The draws each transform makes, in order, are part of its
contract and documented with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tcm_jax import _checks
from tcm_jax.data._image_ops import _check_stats
from tcm_jax.data._image_ops import center_crop
from tcm_jax.data._image_ops import horizontal_flip
from tcm_jax.data._image_ops import IMAGENET_MEAN
from tcm_jax.data._image_ops import IMAGENET_STD
from tcm_jax.data._image_ops import normalize
from tcm_jax.data._image_ops import random_resized_crop
from tcm_jax.data._image_ops import random_resized_crop_box
from tcm_jax.data._image_ops import random_translate
from tcm_jax.data._image_ops import resize
from tcm_jax.data._image_ops import resize_shorter
from tcm_jax.data._image_ops import translate

__all__ = [
    'EvalTransform',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'SmallEvalTransform',
    'SmallTrainTransform',
    'TrainTransform',
    'center_crop',
    'horizontal_flip',
    'normalize',
    'random_resized_crop',
    'random_resized_crop_box',
    'random_translate',
    'resize',
    'resize_shorter',
    'translate',
]


def _freeze(transform, **values) -> None:
  """Stores checked field values on a frozen dataclass."""
  for name, value in values.items():
    object.__setattr__(transform, name, value)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Training recipe: random resized crop, horizontal flip, normalisation.

  Draws `random_resized_crop_box`'s draws, then (with `flip`) one for
  `horizontal_flip` at p = 0.5.

  Args:
    size: side of the output, >= 1.
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio, width / height.
    flip: whether to flip horizontally at random.
    mean: one mean per output channel, on the [0, 1] scale.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels (see `normalize`).

  Raises:
    ValueError: at construction, for a bad `size`, `scale`, `ratio`,
      `channels`, `mean` or `std`; when called, for a bad image or `rng`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> train = transforms.TrainTransform(size=64)
    >>> image = np.zeros((90, 120, 3), np.uint8)
    >>> x = train(image, np.random.default_rng(0))
    >>> x.shape, x.dtype
    ((64, 64, 3), dtype('float32'))
  """
  size: int = 224
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  channels: int = 3

  def __post_init__(self):
    mean, std, channels = _check_stats(self.mean, self.std, self.channels)
    _freeze(self, size=_checks.check_int('size', self.size, 1),
            scale=_checks.check_positive_range('scale', self.scale, upper=1.0),
            ratio=_checks.check_positive_range('ratio', self.ratio),
            flip=bool(self.flip), mean=mean, std=std, channels=channels)

  def __call__(self, image: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """float32 `[size, size, channels]` augmented view of a uint8 image."""
    image = random_resized_crop(image, self.size, rng, scale=self.scale,
                                ratio=self.ratio)
    if self.flip:
      image = horizontal_flip(image, rng)
    return normalize(image, self.mean, self.std, self.channels)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Evaluation recipe: resize the shorter side, centre crop, normalise.

  Deterministic; equals torchvision's `Resize(resize), CenterCrop(size),
  ToTensor(), Normalize(mean, std)` in HWC layout. An image smaller than
  `resize` is upsampled.

  Args:
    size: side of the centre crop and of the output, >= 1.
    resize: length the shorter side is resized to first, >= `size`.
    mean: one mean per output channel, on the [0, 1] scale.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels (see `normalize`).

  Raises:
    ValueError: at construction, for a bad `size`, `channels`, `mean` or
      `std`, or `resize` below `size`; when called, for a bad image.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> evaluate = transforms.EvalTransform()
    >>> evaluate(np.zeros((300, 257, 3), np.uint8)).shape
    (224, 224, 3)
    >>> evaluate(np.zeros((20, 30), np.uint8)).shape
    (224, 224, 3)
  """
  size: int = 224
  resize: int = 256
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  channels: int = 3

  def __post_init__(self):
    size = _checks.check_int('size', self.size, 1)
    mean, std, channels = _check_stats(self.mean, self.std, self.channels)
    _freeze(self, size=size,
            resize=_checks.check_int('resize', self.resize, size),
            mean=mean, std=std, channels=channels)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """float32 `[size, size, channels]` view of a uint8 image."""
    image = center_crop(resize_shorter(image, self.resize), self.size)
    return normalize(image, self.mean, self.std, self.channels)


@dataclasses.dataclass(frozen=True)
class SmallTrainTransform:
  """Training recipe for tiny images (8x8 digits): resize, shift, normalise.

  The image is resized bilinearly to `size x size` (aspect ratio not kept),
  then its content shifted by a random offset of up to `max_shift` pixels
  per axis with zero fill (`random_translate`), then, with `flip`, flipped
  at random. Digits are not mirror-symmetric, so `flip` is off by default.
  Draws `random_translate`'s two integers, then (with `flip`) one for
  `horizontal_flip` at p = 0.5.

  Args:
    size: side of the output, >= 1.
    max_shift: largest shift per axis in output pixels, >= 0; None for
      `size // 8`.
    flip: whether to flip horizontally at random.
    mean: one mean per output channel, on the [0, 1] scale; `(0.5,)` for
      `channels=1`.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels (see `normalize`).

  Raises:
    ValueError: at construction, for a bad `size`, `max_shift`, `channels`,
      `mean` or `std`; when called, for a bad image or `rng`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> train = transforms.SmallTrainTransform()
    >>> train.max_shift
    4
    >>> digit = np.zeros((8, 8), np.uint8)
    >>> x = train(digit, np.random.default_rng(0))
    >>> x.shape, x.dtype, float(x.min())
    ((32, 32, 3), dtype('float32'), -1.0)
  """
  size: int = 32
  max_shift: int | None = None
  flip: bool = False
  mean: tuple[float, ...] = (0.5,) * 3
  std: tuple[float, ...] = (0.5,) * 3
  channels: int = 3

  def __post_init__(self):
    size = _checks.check_int('size', self.size, 1)
    max_shift = size // 8 if self.max_shift is None else self.max_shift
    mean, std, channels = _check_stats(self.mean, self.std, self.channels)
    _freeze(self, size=size,
            max_shift=_checks.check_int('max_shift', max_shift, 0),
            flip=bool(self.flip), mean=mean, std=std, channels=channels)

  def __call__(self, image: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """float32 `[size, size, channels]` augmented view of a uint8 image."""
    image = random_translate(resize(image, self.size), rng, self.max_shift)
    if self.flip:
      image = horizontal_flip(image, rng)
    return normalize(image, self.mean, self.std, self.channels)


@dataclasses.dataclass(frozen=True)
class SmallEvalTransform:
  """Evaluation recipe for tiny images: bilinear resize, normalise.

  Args:
    size: side of the output, >= 1.
    mean: one mean per output channel, on the [0, 1] scale.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels (see `normalize`).

  Raises:
    ValueError: at construction, for a bad `size`, `channels`, `mean` or
      `std`; when called, for a bad image.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> evaluate = transforms.SmallEvalTransform()
    >>> x = evaluate(np.full((8, 8), 255, np.uint8))
    >>> x.shape, float(x.max())
    ((32, 32, 3), 1.0)
  """
  size: int = 32
  mean: tuple[float, ...] = (0.5,) * 3
  std: tuple[float, ...] = (0.5,) * 3
  channels: int = 3

  def __post_init__(self):
    mean, std, channels = _check_stats(self.mean, self.std, self.channels)
    _freeze(self, size=_checks.check_int('size', self.size, 1), mean=mean,
            std=std, channels=channels)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """float32 `[size, size, channels]` view of a uint8 image."""
    return normalize(resize(image, self.size), self.mean, self.std,
                     self.channels)
