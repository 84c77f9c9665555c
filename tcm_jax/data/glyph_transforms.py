"""Train-time augmentation for rendered glyph images.

A glyph image is a `uint8` array `[H, W]` or `[H, W, 1]`, white ink (255) on
a black (0) background, the glyph centred and cropped to its ink box. Font
renderings of one character differ from each other by small rotations,
slants, sizes, offsets and stroke weights, so the training recipe draws one
random affine map (`random_affine`) and one random change of stroke weight
(`random_stroke`) per image, then normalises as the other recipes do
(`transforms.normalize`). The functions accept every layout
`transforms.normalize` does (`[H, W, 3]` too) and keep it.

As in `transforms`, randomness comes only from the `np.random.Generator`
passed in, and the draws each function makes, in order, are part of its
contract: every draw is made whatever the parameters, so that the draws of
later transforms do not depend on them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image
from PIL import ImageFilter

from tcm_jax import _checks
from tcm_jax.data._image_ops import _check_image
from tcm_jax.data._image_ops import _check_stats
from tcm_jax.data.transforms import _freeze
from tcm_jax.data.transforms import SmallEvalTransform
from tcm_jax.data.transforms import normalize
from tcm_jax.data.transforms import resize

# Thinning that keeps less than this fraction of the ink (the sum of the
# pixel values) has erased the strokes rather than thinned them.
_MIN_INK_KEPT = 0.1


def _check_affine_ranges(max_rotation, scale, max_shear, max_shift
                         ) -> tuple[float, tuple[float, float], float, float]:
  """`random_affine`'s ranges, checked, as floats."""
  return (_checks.check_number('max_rotation', max_rotation, at_least=0,
                               at_most=180,
                               expected='a number of degrees in [0, 180]'),
          _checks.check_positive_range('scale', scale),
          _checks.check_number('max_shear', max_shear, at_least=0,
                               finite=True),
          _checks.check_number('max_shift', max_shift, at_least=0, at_most=1,
                               expected='a fraction of the side in [0, 1]'))


def _on_pillow(image: np.ndarray, operation) -> np.ndarray:
  """`operation` on a checked image as a Pillow image, in the input's layout."""
  # Pillow holds a single channel as a 2-D array (mode L).
  plane = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
  return np.array(operation(Image.fromarray(plane))).reshape(image.shape)


def _inverse_coefficients(height: int, width: int, rotation: float,
                          scale: float, shear: float, dx: float, dy: float
                          ) -> tuple[float, ...]:
  """Pillow's AFFINE data `(a, b, c, d, e, f)` for `affine`'s forward map.

  Pillow samples output point `(x, y)` at input point
  `(a x + b y + c, d x + e y + f)`, so it takes the inverse of the forward
  map `p -> centre + shift + M (p - centre)`, `M = R S H`:
  `p = centre + M^-1 (p' - centre - shift)`, `M^-1 = H^-1 S^-1 R^-1`.
  """
  theta = math.radians(rotation)
  cos, sin = math.cos(theta), math.sin(theta)
  # R^-1 = [[cos, -sin], [sin, cos]], H^-1 = [[1, -shear], [0, 1]].
  a, b = (cos - shear * sin) / scale, (-sin - shear * cos) / scale
  d, e = sin / scale, cos / scale
  cx, cy = width / 2, height / 2
  ox, oy = cx + dx, cy + dy
  return a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy


def affine(image: np.ndarray, *, rotation: float = 0.0, scale: float = 1.0,
           shear: float = 0.0, dx: float = 0.0, dy: float = 0.0
           ) -> np.ndarray:
  """Maps `image` through one affine map about its centre, filling with 0.

  Coordinates are continuous, `x` rightwards and `y` downwards, pixel
  `(i, j)` covering `[j, j + 1) x [i, i + 1)` (its centre at
  `(j + 0.5, i + 0.5)`), and the centre of the image is `(W / 2, H / 2)`.
  The forward map takes input point `p` to output point

    `p' = centre + (dx, dy) + R(rotation) @ (scale * H(shear)) @ (p - centre)`

  with `R(t) = [[cos t, sin t], [-sin t, cos t]]` (counter-clockwise on
  screen, as `PIL.Image.rotate`) and `H(s) = [[1, s], [0, 1]]` (a horizontal
  shear: `x' = x + s (y - centre_y)`). Each output pixel takes Pillow's
  bilinear interpolation of the input at the inverse image of its centre,
  which Pillow truncates to an integer; a centre mapped outside the input's
  frame is black, and within half a pixel inside it the edge pixels extend.
  The identity parameters return the image unchanged.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    rotation: angle in degrees, counter-clockwise.
    scale: isotropic scale factor, > 0 (below 1 shrinks the glyph).
    shear: horizontal shear factor (the tangent of the slant; positive moves
      the rows below the centre rightwards).
    dx: shift rightwards in pixels (negative: leftwards).
    dy: shift downwards in pixels (negative: upwards).

  Returns:
    A new uint8 image of the same shape.

  Raises:
    ValueError: for a bad image, a parameter that is not a finite number, or
      a `scale` that is not positive.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import glyph_transforms
    >>> image = np.zeros((3, 3), np.uint8)
    >>> image[0, 1] = 255
    >>> glyph_transforms.affine(image, dx=1.0, dy=2.0)
    array([[  0,   0,   0],
           [  0,   0,   0],
           [  0,   0, 255]], dtype=uint8)

    A quarter turn counter-clockwise takes the top to the left.

    >>> int(np.argmax(glyph_transforms.affine(image, rotation=90.0)[:, 0]))
    1
  """
  image = _check_image(image)
  rotation = _checks.check_number('rotation', rotation, finite=True)
  scale = _checks.check_number('scale', scale, above=0, finite=True)
  shear = _checks.check_number('shear', shear, finite=True)
  dx = _checks.check_number('dx', dx, finite=True)
  dy = _checks.check_number('dy', dy, finite=True)
  h, w = image.shape[:2]
  data = _inverse_coefficients(h, w, rotation, scale, shear, dx, dy)
  return _on_pillow(image, lambda im: im.transform(
      (w, h), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR))


def random_affine(image: np.ndarray, rng: np.random.Generator, *,
                  max_rotation: float = 10.0, scale=(0.85, 1.1),
                  max_shear: float = 0.15, max_shift: float = 0.08
                  ) -> np.ndarray:
  """`affine` by one uniformly drawn rotation, scale, shear and shift.

  Draws, in order: `rng.uniform(-max_rotation, max_rotation)` (rotation,
  degrees), `rng.uniform(*scale)` (scale), `rng.uniform(-max_shear,
  max_shear)` (shear), `rng.uniform(-max_shift, max_shift)` (dx, times the
  width) and `rng.uniform(-max_shift, max_shift)` (dy, times the height):
  five draws, whatever the ranges. With `max_rotation = max_shear =
  max_shift = 0` and `scale = (1, 1)` the image comes back unchanged.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}.
    rng: the generator to draw from.
    max_rotation: the largest rotation either way, in degrees, in [0, 180].
    scale: `(low, high)`, `0 < low <= high`: the range of the scale factor.
    max_shear: the largest horizontal shear factor either way, >= 0.
    max_shift: the largest shift either way along each axis, as a fraction
      of that side, in [0, 1].

  Returns:
    A new uint8 image of the same shape.

  Raises:
    ValueError: for a bad image or `rng`, a `max_rotation`, `max_shear` or
      `max_shift` outside its range, or a `scale` that is not an ordered pair
      of positive numbers.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import glyph_transforms
    >>> glyph = np.zeros((32, 32), np.uint8)
    >>> glyph[4:28, 14:18] = 255
    >>> out = glyph_transforms.random_affine(glyph, np.random.default_rng(0))
    >>> out.shape, out.dtype
    ((32, 32), dtype('uint8'))
    >>> still = glyph_transforms.random_affine(
    ...     glyph, np.random.default_rng(0), max_rotation=0.0,
    ...     scale=(1.0, 1.0), max_shear=0.0, max_shift=0.0)
    >>> bool(np.array_equal(still, glyph))
    True
  """
  image = _check_image(image)
  rng = _checks.check_rng('rng', rng)
  max_rotation, scale, max_shear, max_shift = _check_affine_ranges(
      max_rotation, scale, max_shear, max_shift)
  h, w = image.shape[:2]
  rotation = rng.uniform(-max_rotation, max_rotation)
  factor = rng.uniform(*scale)
  shear = rng.uniform(-max_shear, max_shear)
  dx = rng.uniform(-max_shift, max_shift) * w
  dy = rng.uniform(-max_shift, max_shift) * h
  return affine(image, rotation=rotation, scale=factor, shear=shear, dx=dx,
                dy=dy)


def random_stroke(image: np.ndarray, rng: np.random.Generator, *,
                  p: float = 0.5) -> np.ndarray:
  """Thickens or thins the strokes of `image` with probability `p`.

  Thickening is a 3 x 3 grey dilation (`ImageFilter.MaxFilter(3)`), thinning
  a 3 x 3 grey erosion (`ImageFilter.MinFilter(3)`); past the frame the edge
  pixels extend, so ink touching the border is not eroded from outside.
  Erosion removes strokes under 3 pixels wide altogether: when thinning
  would keep less than a tenth of the ink (the sum of the pixel values), the
  image is returned as it is instead.

  Draws two `rng.random()`, whatever `p`: the stroke changes when the first
  is below `p`; it thickens when the second is below 0.5, else thins.

  Args:
    image: uint8 `[H, W]` or `[H, W, C]` image, C in {1, 3}, light strokes
      on a dark background.
    rng: the generator to draw from.
    p: probability of changing the stroke, in [0, 1].

  Returns:
    A new uint8 image of the same shape when the stroke changes, else
    `image`.

  Raises:
    ValueError: for a bad image or `rng`, or `p` outside [0, 1].

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import glyph_transforms
    >>> square = np.zeros((5, 5), np.uint8)
    >>> square[1:4, 1:4] = 255

    At p = 1, seed 0 draws a thickening and seed 1 a thinning.

    >>> thick = glyph_transforms.random_stroke(
    ...     square, np.random.default_rng(0), p=1.0)
    >>> int(np.count_nonzero(thick))
    25
    >>> glyph_transforms.random_stroke(
    ...     square, np.random.default_rng(1), p=1.0)[1:4, 1:4]
    array([[  0,   0,   0],
           [  0, 255,   0],
           [  0,   0,   0]], dtype=uint8)

    Thinning would erase a one-pixel dot, so the dot is returned as it is.

    >>> dot = np.zeros((5, 5), np.uint8)
    >>> dot[2, 2] = 255
    >>> glyph_transforms.random_stroke(
    ...     dot, np.random.default_rng(1), p=1.0) is dot
    True
  """
  image = _check_image(image)
  rng = _checks.check_rng('rng', rng)
  p = _checks.check_probability('p', p)
  change, thicken = rng.random() < p, rng.random() < 0.5
  if not change:
    return image
  if thicken:
    return _on_pillow(image, lambda im: im.filter(ImageFilter.MaxFilter(3)))
  thinned = _on_pillow(image, lambda im: im.filter(ImageFilter.MinFilter(3)))
  if (thinned.sum(dtype=np.int64)
      < _MIN_INK_KEPT * image.sum(dtype=np.int64)):
    return image
  return thinned


@dataclasses.dataclass(frozen=True)
class GlyphTrainTransform:
  """Training recipe for glyphs: resize, random affine and stroke, normalise.

  The image is resized bilinearly to `size x size` (an image of that size
  passes unchanged), mapped through a random affine map (`random_affine`),
  its strokes thickened or thinned at random (`random_stroke`), then
  normalised (`normalize`). Draws `random_affine`'s five numbers, then
  `random_stroke`'s two.

  Args:
    size: side of the output, >= 1.
    max_rotation: the largest rotation either way, in degrees, in [0, 180].
    scale: `(low, high)`, `0 < low <= high`: the range of the scale factor.
    max_shear: the largest horizontal shear factor either way, >= 0.
    max_shift: the largest shift along each axis, as a fraction of the side,
      in [0, 1].
    stroke_p: probability of thickening or thinning the strokes, in [0, 1].
    mean: one mean per output channel, on the [0, 1] scale.
    std: one positive standard deviation per output channel.
    channels: 1 or 3, the output channels (see `normalize`).

  Raises:
    ValueError: at construction, for a bad `size`, `max_rotation`, `scale`,
      `max_shear`, `max_shift`, `stroke_p`, `channels`, `mean` or `std`; when
      called, for a bad image or `rng`.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data import glyph_transforms
    >>> train = glyph_transforms.GlyphTrainTransform()
    >>> glyph = np.zeros((24, 20), np.uint8)
    >>> glyph[2:22, 8:12] = 255
    >>> x = train(glyph, np.random.default_rng(0))
    >>> x.shape, x.dtype, float(x.min()), float(x.max())
    ((32, 32, 1), dtype('float32'), -1.0, 1.0)
  """
  size: int = 32
  max_rotation: float = 10.0
  scale: tuple[float, float] = (0.85, 1.1)
  max_shear: float = 0.15
  max_shift: float = 0.08
  stroke_p: float = 0.5
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  channels: int = 1

  def __post_init__(self):
    max_rotation, scale, max_shear, max_shift = _check_affine_ranges(
        self.max_rotation, self.scale, self.max_shear, self.max_shift)
    mean, std, channels = _check_stats(self.mean, self.std, self.channels)
    _freeze(self, size=_checks.check_int('size', self.size, 1),
            max_rotation=max_rotation, scale=scale, max_shear=max_shear,
            max_shift=max_shift,
            stroke_p=_checks.check_probability('stroke_p', self.stroke_p),
            mean=mean, std=std, channels=channels)

  def __call__(self, image: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """float32 `[size, size, channels]` augmented view of a uint8 glyph."""
    image = random_affine(resize(image, self.size), rng,
                          max_rotation=self.max_rotation, scale=self.scale,
                          max_shear=self.max_shear, max_shift=self.max_shift)
    image = random_stroke(image, rng, p=self.stroke_p)
    return normalize(image, self.mean, self.std, self.channels)


@dataclasses.dataclass(frozen=True)
class GlyphEvalTransform(SmallEvalTransform):
  """Evaluation recipe for glyphs: bilinear resize, normalise.

  Deterministic, no augmentation: `GlyphTrainTransform` without its random
  steps; `SmallEvalTransform` with one channel by default. An image already
  `size x size` passes the resize unchanged.

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
    >>> from tcm_jax.data import glyph_transforms
    >>> evaluate = glyph_transforms.GlyphEvalTransform()
    >>> x = evaluate(np.full((32, 32), 255, np.uint8))
    >>> x.shape, float(x.max())
    ((32, 32, 1), 1.0)
  """
  size: int = 32
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  channels: int = 1
