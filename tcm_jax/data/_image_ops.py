"""The image operations of `tcm_jax.data.transforms`, and their checks.

The per-sample operations that the recipes in `tcm_jax.data.transforms` (and
`tcm_jax.data.glyph_transforms`) are made of: cropping, resizing, flipping,
shifting and normalising one `uint8` image on the host, with NumPy and
Pillow. Their contract (layouts, resampling, the draws each one makes) is
documented in `tcm_jax.data.transforms`, which is where they are used from:

  >>> from tcm_jax.data import _image_ops
  >>> from tcm_jax.data import transforms
  >>> transforms.resize is _image_ops.resize
  True
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from tcm_jax import _checks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R BT.601 luma weights, the ones Pillow's convert('L') uses.
_LUMA_601 = (0.299, 0.587, 0.114)
# torchvision's RandomResizedCrop gives up on random boxes after 10 draws.
_CROP_ATTEMPTS = 10


def _check_stats(mean, std, channels
                 ) -> tuple[tuple[float, ...], tuple[float, ...], int]:
  """`mean` and `std` as float tuples, one value per channel; `channels`."""
  channels = _checks.check_choice(
      'channels', _checks.as_int('channels', channels, 'one of [1, 3]'), (1, 3))
  stats = []
  for name, value in (('mean', mean), ('std', std)):
    try:
      value = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
      raise ValueError(
          f'{name} must be a sequence of {channels} numbers, got {value!r}.'
      ) from e
    if len(value) != channels:
      raise ValueError(
          f'{name} must have one value per output channel ({channels}), got '
          f'{len(value)}: {value}.')
    if not all(math.isfinite(v) for v in value):
      raise ValueError(f'{name} must be finite, got {value}.')
    stats.append(value)
  if min(stats[1]) <= 0.0:
    raise ValueError(f'std must be positive, got {stats[1]}.')
  return stats[0], stats[1], channels


def _check_image(image) -> np.ndarray:
  """`image` as a uint8 `[H, W]` or `[H, W, 1 | 3]` array with H, W >= 1."""
  image = np.asarray(image)
  if (image.dtype != np.uint8 or image.ndim not in (2, 3)
      or (image.ndim == 3 and image.shape[2] not in (1, 3))
      or 0 in image.shape[:2]):
    raise ValueError(
        'image must be a uint8 array of shape (H, W) or (H, W, C) with C in '
        f'(1, 3) and H, W >= 1, got shape {image.shape} and dtype '
        f'{image.dtype}.')
  return image


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a checked image; Pillow holds 2-D arrays as mode L."""
  plane = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
  resized = np.array(Image.fromarray(plane).resize((width, height),
                                                   Image.Resampling.BILINEAR))
  return resized.reshape(resized.shape[:2] + image.shape[2:])


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """The box `RandomResizedCrop` crops from a `height x width` image.

  torchvision's algorithm: up to 10 times, draw an area fraction uniformly in
  `scale` and an aspect ratio (width / height) log-uniformly in `ratio`,
  round the box's sides to integers, and keep the first box that fits, at a
  uniformly drawn position. When none fits, fall back to the central box of
  the whole image with its aspect ratio clamped to `ratio`. Unlike
  torchvision, a fallback side that rounds to 0 (an extreme `ratio` on a
  thin image) is kept at 1, so the box is never empty.

  Draws, per attempt: `rng.uniform` (area), `rng.uniform` (log ratio); then,
  for the box kept, `rng.integers` (top) and `rng.integers` (left).

  Args:
    height: image height, >= 1.
    width: image width, >= 1.
    rng: the generator to draw from.
    scale: `(low, high)`, `0 < low <= high <= 1`: the range of the box's area
      as a fraction of the image's.
    ratio: `(low, high)`, `0 < low <= high`: the range of the box's aspect
      ratio, width / height.

  Returns:
    `(top, left, box_height, box_width)`, inside the image, sides >= 1.

  Raises:
    ValueError: for a size below 1, a `scale` or `ratio` that is not an
      ordered pair of positive numbers (`scale` above 1), or an `rng` that
      is not a `numpy.random.Generator`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> rng = np.random.default_rng(0)
    >>> top, left, h, w = transforms.random_resized_crop_box(300, 257, rng)
    >>> 0 <= top and top + h <= 300 and 0 <= left and left + w <= 257
    True
    >>> transforms.random_resized_crop_box(100, 100, rng, scale=(0.25, 0.25),
    ...                                    ratio=(1.0, 1.0))[2:]
    (50, 50)

    A box of 8% of a 1-pixel-high strip never fits: the central box.

    >>> transforms.random_resized_crop_box(1, 1000, rng)
    (0, 499, 1, 1)
  """
  height = _checks.check_int('height', height, 1)
  width = _checks.check_int('width', width, 1)
  rng = _checks.check_rng('rng', rng)
  scale = _checks.check_positive_range('scale', scale, upper=1.0)
  ratio = _checks.check_positive_range('ratio', ratio)
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(_CROP_ATTEMPTS):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    # Python's round (half to even), as torchvision.
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h, endpoint=True))
      left = int(rng.integers(0, width - w, endpoint=True))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, max(1, int(round(width / ratio[0])))
  elif in_ratio > ratio[1]:
    w, h = max(1, int(round(height * ratio[1]))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
                        ) -> np.ndarray:
  """Crops a random box (`random_resized_crop_box`), resizes it to square.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    size: side of the output, >= 1.
    rng: the generator to draw the box from (its draws are
      `random_resized_crop_box`'s).
    scale: range of the box's area as a fraction of the image's.
    ratio: range of the box's aspect ratio, width / height.

  Returns:
    uint8 `[size, size]` or `[size, size, C]`: the box, bilinearly resized.

  Raises:
    ValueError: for an image that is not uint8 `[H, W]` or `[H, W, 1 | 3]`,
      or a bad `size`, `scale`, `ratio` or `rng`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.zeros((300, 257, 3), np.uint8)
    >>> rng = np.random.default_rng(0)
    >>> transforms.random_resized_crop(image, 224, rng).shape
    (224, 224, 3)
  """
  image = _check_image(image)
  size = _checks.check_int('size', size, 1)
  top, left, h, w = random_resized_crop_box(
      image.shape[0], image.shape[1], rng, scale=scale, ratio=ratio)
  return _resize(image[top:top + h, left:left + w], size, size)


def horizontal_flip(image: np.ndarray, rng: np.random.Generator,
                    p: float = 0.5) -> np.ndarray:
  """Mirrors the columns of `image` with probability `p`.

  Draws one `rng.random()` whatever `p`, so that the draws of later
  transforms do not depend on it; the image is flipped when it is below `p`.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    rng: the generator to draw from.
    p: probability of flipping, in [0, 1].

  Returns:
    `image[:, ::-1]` (a view) when flipped, else `image`.

  Raises:
    ValueError: for a bad image or `rng`, or `p` outside [0, 1].

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.array([[1, 2, 3]], np.uint8)
    >>> transforms.horizontal_flip(image, np.random.default_rng(0), p=1.0)
    array([[3, 2, 1]], dtype=uint8)
    >>> transforms.horizontal_flip(image, np.random.default_rng(0), p=0.0)
    array([[1, 2, 3]], dtype=uint8)
  """
  image = _check_image(image)
  rng = _checks.check_rng('rng', rng)
  p = _checks.check_probability('p', p)
  return image[:, ::-1] if rng.random() < p else image


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Resizes `image` bilinearly to `size`, aspect ratio not kept.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    size: the output side (square), or `(height, width)`; each >= 1.

  Returns:
    uint8 image of the new size, in the input's layout.

  Raises:
    ValueError: for a bad image, or a side below 1.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> transforms.resize(np.zeros((8, 8), np.uint8), 32).shape
    (32, 32)
    >>> transforms.resize(np.zeros((8, 8, 3), np.uint8), (16, 24)).shape
    (16, 24, 3)
  """
  image = _check_image(image)
  if isinstance(size, (tuple, list)) and len(size) == 2:
    height, width = (_checks.check_int('size', s, 1) for s in size)
  else:
    height = width = _checks.check_int('size', size, 1)
  return _resize(image, height, width)


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes `image` bilinearly so that its shorter side is `size`.

  As torchvision's `Resize(size)`: the longer side becomes
  `int(size * longer / shorter)`. An image smaller than `size` is upsampled.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    size: the new length of the shorter side, >= 1.

  Returns:
    uint8 image with shorter side `size`, in the input's layout.

  Raises:
    ValueError: for a bad image, or `size` below 1.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> transforms.resize_shorter(np.zeros((300, 257, 3), np.uint8), 256).shape
    (298, 256, 3)
    >>> transforms.resize_shorter(np.zeros((100, 50), np.uint8), 256).shape
    (512, 256)
  """
  image = _check_image(image)
  size = _checks.check_int('size', size, 1)
  h, w = image.shape[:2]
  short, long = min(h, w), max(h, w)
  new_long = int(size * long / short)
  return _resize(image, *((new_long, size) if w <= h else (size, new_long)))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central `size x size` box of `image`.

  The offsets round as torchvision's `CenterCrop`:
  `int(round((H - size) / 2.0))`, half to even.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}, at least `size`
      on each side (`resize_shorter` first to upsample a smaller one).
    size: side of the box, >= 1.

  Returns:
    `[size, size]` or `[size, size, C]` view of `image`.

  Raises:
    ValueError: for a bad image, `size` below 1, or an image smaller than
      `size` (torchvision would pad it with zeros instead).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.arange(25, dtype=np.uint8).reshape(5, 5)
    >>> transforms.center_crop(image, 3)
    array([[ 6,  7,  8],
           [11, 12, 13],
           [16, 17, 18]], dtype=uint8)
  """
  image = _check_image(image)
  size = _checks.check_int('size', size, 1)
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(
        f'image of shape {image.shape} is smaller than the crop size {size}; '
        'resize_shorter it to at least the crop size first.')
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def translate(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """Shifts the content of `image` by `(dy, dx)`, filling with zeros.

  Pixel `(y, x)` moves to `(y + dy, x + dx)`; what leaves the frame is lost
  and what enters it is 0 (the background of dark-background images such as
  the handwritten digits).

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    dy: rows down (negative: up).
    dx: columns right (negative: left).

  Returns:
    A new uint8 image of the same shape.

  Raises:
    ValueError: for a bad image, or a non-integer shift.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.array([[1, 2], [3, 4]], np.uint8)
    >>> transforms.translate(image, 1, -1)
    array([[0, 0],
           [2, 0]], dtype=uint8)
  """
  image = _check_image(image)
  h, w = image.shape[:2]
  # A shift past the frame empties it; clamping keeps the slices consistent.
  dy = min(max(_checks.check_int('dy', dy), -h), h)
  dx = min(max(_checks.check_int('dx', dx), -w), w)
  out = np.zeros_like(image)
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = (
      image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)])
  return out


def random_translate(image: np.ndarray, rng: np.random.Generator,
                     max_shift: int) -> np.ndarray:
  """`translate` by a uniformly drawn offset of at most `max_shift` pixels.

  Draws `dy, dx = rng.integers(-max_shift, max_shift, size=2,
  endpoint=True)`, each axis independently.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    rng: the generator to draw from.
    max_shift: the largest shift along each axis, >= 0.

  Returns:
    A new uint8 image of the same shape, shifted, zero-filled.

  Raises:
    ValueError: for a bad image or `rng`, or `max_shift` below 0.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.full((4, 4), 9, np.uint8)
    >>> rng = np.random.default_rng(0)
    >>> shifted = transforms.random_translate(image, rng, max_shift=2)
    >>> shifted.shape, shifted.dtype
    ((4, 4), dtype('uint8'))
    >>> transforms.random_translate(image, rng, max_shift=0)[0]
    array([9, 9, 9, 9], dtype=uint8)
  """
  rng = _checks.check_rng('rng', rng)
  max_shift = _checks.check_int('max_shift', max_shift, 0)
  dy, dx = rng.integers(-max_shift, max_shift, size=2, endpoint=True)
  return translate(image, int(dy), int(dx))


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              channels: int = 3) -> np.ndarray:
  """`(image / 255 - mean) / std` per channel, as float32 `[H, W, channels]`.

  A grayscale image is replicated to 3 channels when `channels == 3`; an RGB
  image is reduced to its ITU-R BT.601 luma, `0.299 R + 0.587 G + 0.114 B`
  (unrounded), when `channels == 1`. The arithmetic is torchvision's
  `ToTensor` then `Normalize`, in float32.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    mean: one mean per output channel, on the [0, 1] scale.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels.

  Returns:
    float32 `[H, W, channels]`.

  Raises:
    ValueError: for a bad image, `channels` other than 1 or 3, `mean` or
      `std` not of length `channels`, or a `std` that is not positive.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import transforms
    >>> image = np.array([[0, 255]], np.uint8)
    >>> transforms.normalize(image, mean=(0.5,) * 3, std=(0.5,) * 3)
    array([[[-1., -1., -1.],
            [ 1.,  1.,  1.]]], dtype=float32)
  """
  image = _check_image(image)
  mean, std, channels = _check_stats(mean, std, channels)
  x = image.astype(np.float32)
  if x.ndim == 2:
    x = x[..., None]
  if x.shape[2] == 1 and channels == 3:
    x = np.repeat(x, 3, axis=2)
  elif x.shape[2] == 3 and channels == 1:
    x = (x @ np.asarray(_LUMA_601, np.float32))[..., None]
  return ((x / np.float32(255) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))
