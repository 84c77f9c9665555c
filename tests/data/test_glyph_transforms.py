"""Glyph augmentation against NumPy references, geometry and replayed draws."""

import fractions
import inspect
import math
import re

import numpy as np
import pytest

from tcm_jax.data import datasets
from tcm_jax.data import glyph_transforms
from tcm_jax.data import pipeline
from tcm_jax.data import transforms
from tcm_jax.data.sampler import ClassBalancedSampler

# random_affine's documented defaults.
_DEFAULTS = dict(max_rotation=10.0, scale=(0.85, 1.1), max_shear=0.15,
                 max_shift=0.08)
# Wider than the defaults, so that every part of the map shows.
_WIDE = dict(max_rotation=40.0, scale=(0.6, 1.4), max_shear=0.4,
             max_shift=0.15)
_STILL = dict(max_rotation=0.0, scale=(1.0, 1.0), max_shear=0.0,
              max_shift=0.0)


def _noise(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _cross(height=32, width=32, arm=10, half_width=3):
  """A thick white cross on black, centred, its arms `arm` from the centre."""
  image = np.zeros((height, width), np.uint8)
  cy, cx = height // 2, width // 2
  image[cy - arm:cy + arm, cx - half_width:cx + half_width] = 255
  image[cy - half_width:cy + half_width, cx - arm:cx + arm] = 255
  return image


def _ring(size=32):
  """An antialiased ring touching the frame, as a glyph cropped to its ink."""
  centre = size / 2
  y, x = np.mgrid[0:size, 0:size] + 0.5
  distance = np.hypot(x - centre, y - centre)
  ink = np.clip(3.0 - np.abs(distance - (centre - 3.0)), 0.0, 1.0)
  return np.round(255 * ink).astype(np.uint8)


def _centroid(image):
  """`(x, y)` of the ink's centre of mass, in pixel-centre coordinates."""
  weights = image.astype(np.float64)
  y, x = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
  return np.array([(weights * x).sum(), (weights * y).sum()]) / weights.sum()


def _extent(image):
  """Rows and columns holding ink above half intensity: `(height, width)`."""
  rows, cols = np.nonzero(image > 127)
  return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


# --- random_affine against a NumPy reference. --------------------------------


def _forward(height, width, rotation, scale, shear, dx, dy):
  """The documented forward map, input to output points, as a 3 x 3 matrix."""
  t = math.radians(rotation)
  to_centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
  rotate = np.array([[math.cos(t), math.sin(t), 0],
                     [-math.sin(t), math.cos(t), 0], [0, 0, 1]])
  zoom = np.diag([scale, scale, 1.0])
  slant = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
  back = np.array([[1, 0, width / 2 + dx], [0, 1, height / 2 + dy],
                   [0, 0, 1]])
  return back @ rotate @ zoom @ slant @ to_centre


def _reference(image, forward):
  """Bilinear samples at the inverse images of the output pixels' centres.

  Black outside the frame; within half a pixel inside it the edge pixels
  extend.
  """
  h, w = image.shape[:2]
  y, x = np.mgrid[0:h, 0:w] + 0.5
  points = np.stack([x.ravel(), y.ravel(), np.ones(h * w)])
  x, y, _ = np.linalg.inv(forward) @ points
  inside = (0 <= x) & (x < w) & (0 <= y) & (y < h)
  u, v = x - 0.5, y - 0.5
  j, i = np.floor(u).astype(int), np.floor(v).astype(int)
  fu, fv = u - j, v - i
  plane = image.reshape(h, w, -1).astype(np.float64)

  def at(rows, cols):
    return plane[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]

  fu, fv = fu[:, None], fv[:, None]
  top = at(i, j) * (1 - fu) + at(i, j + 1) * fu
  bottom = at(i + 1, j) * (1 - fu) + at(i + 1, j + 1) * fu
  out = np.where(inside[:, None], top * (1 - fv) + bottom * fv, 0.0)
  return out.reshape(image.shape)


def _replay(seed, height, width, max_rotation, scale, max_shear, max_shift):
  """`random_affine`'s documented draws, and the generator after them."""
  rng = np.random.default_rng(seed)
  rotation = rng.uniform(-max_rotation, max_rotation)
  factor = rng.uniform(*scale)
  shear = rng.uniform(-max_shear, max_shear)
  dx = rng.uniform(-max_shift, max_shift) * width
  dy = rng.uniform(-max_shift, max_shift) * height
  return (rotation, factor, shear, dx, dy), rng


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('image', [_ring(), _cross(30, 40), _noise(0, (24, 28)),
                                   _noise(1, (20, 24, 1)),
                                   _noise(2, (16, 20, 3))],
                         ids=['ring', 'cross', 'noise', 'noise-hw1',
                              'noise-rgb'])
@pytest.mark.parametrize('ranges', [{}, _WIDE], ids=['defaults', 'wide'])
def test_random_affine_matches_the_numpy_reference(seed, image, ranges):
  rng = np.random.default_rng(seed)
  got = glyph_transforms.random_affine(image, rng, **ranges)
  assert got.shape == image.shape and got.dtype == np.uint8
  params, reference_rng = _replay(seed, *image.shape[:2],
                                  **{**_DEFAULTS, **ranges})
  # Exactly the documented draws were consumed.
  assert rng.bit_generator.state == reference_rng.bit_generator.state
  expected = _reference(image, _forward(*image.shape[:2], *params))
  assert np.abs(expected - got).max() <= 1 + 1e-6
  # Pillow truncates the interpolated value: its floor, but where the two
  # computations' rounding errors fall either side of an integer.
  assert np.mean(got == np.floor(expected + 1e-6)) >= 0.99


def test_random_affine_defaults_are_the_documented_ones():
  parameters = inspect.signature(glyph_transforms.random_affine).parameters
  assert {name: parameters[name].default for name in _DEFAULTS} == _DEFAULTS


# --- Geometry. ---------------------------------------------------------------


@pytest.mark.parametrize('rotation, target', [(90.0, (4, 1)), (-90.0, (4, 7)),
                                              (180.0, (7, 4)),
                                              (270.0, (4, 7))])
def test_rotation_moves_a_marked_pixel_counter_clockwise(rotation, target):
  image = np.zeros((9, 9), np.uint8)
  image[1, 4] = 255  # three pixels above the centre pixel (4, 4)
  got = glyph_transforms.affine(image, rotation=rotation)
  assert np.count_nonzero(got) == 1
  assert got[target] >= 254  # cos(pi / 2) is 6e-17, not 0: truncation


@pytest.mark.parametrize('k', [1, 2, 3])
@pytest.mark.parametrize('shape', [(12, 12), (12, 12, 3)])
def test_quarter_turns_are_rot90(k, shape):
  image = _noise(k, shape)
  got = glyph_transforms.affine(image, rotation=90.0 * k)
  diff = np.abs(got.astype(int) - np.rot90(image, k))
  assert diff.max() <= 1


def test_shift_moves_the_centroid_by_the_shift():
  cross = _cross(32, 32, arm=8)
  got = glyph_transforms.affine(cross, dx=2.5, dy=-1.75)
  np.testing.assert_allclose(_centroid(got) - _centroid(cross), [2.5, -1.75],
                             atol=0.05)


@pytest.mark.parametrize('seed', range(4))
def test_random_shift_is_a_fraction_of_each_side(seed):
  cross = _cross(40, 60, arm=8)
  ranges = dict(_STILL, max_shift=0.1)
  got = glyph_transforms.random_affine(cross, np.random.default_rng(seed),
                                       **ranges)
  (_, _, _, dx, dy), _ = _replay(seed, 40, 60, **ranges)
  assert abs(dx) <= 6 and abs(dy) <= 4
  np.testing.assert_allclose(_centroid(got) - _centroid(cross), [dx, dy],
                             atol=0.05)


@pytest.mark.parametrize('scale', [0.5, 0.75, 0.9])
def test_scale_below_one_shrinks_the_ink_box(scale):
  cross = _cross(32, 32, arm=10)
  height, width = _extent(cross)
  got_height, got_width = _extent(glyph_transforms.affine(cross, scale=scale))
  assert abs(got_height - scale * height) <= 1.5
  assert abs(got_width - scale * width) <= 1.5
  np.testing.assert_allclose(_centroid(glyph_transforms.affine(cross,
                                                               scale=scale)),
                             _centroid(cross), atol=0.05)


def test_shear_slants_rows_by_their_distance_from_the_centre():
  bar = np.zeros((32, 32), np.uint8)
  bar[4:28, 15:17] = 255
  got = glyph_transforms.affine(bar, shear=0.5)
  for row in range(8, 24):
    weights = got[row].astype(np.float64)
    x = (weights * (np.arange(32) + 0.5)).sum() / weights.sum()
    assert abs(x - (16 + 0.5 * (row + 0.5 - 16))) < 0.1, row


# --- Identity, determinism and draws. ----------------------------------------


@pytest.mark.parametrize('image', [_ring(), _noise(3, (28, 36)),
                                   _noise(4, (28, 36, 1)),
                                   _noise(5, (15, 9, 3)), _noise(6, (1, 1))])
def test_identity_parameters_return_the_image_exactly(image):
  for seed in range(3):
    got = glyph_transforms.random_affine(image, np.random.default_rng(seed),
                                         **_STILL)
    np.testing.assert_array_equal(got, image)
    assert got.shape == image.shape and got is not image
  np.testing.assert_array_equal(glyph_transforms.affine(image), image)


def test_same_seed_same_output_different_seeds_different_outputs():
  ring = _ring()
  first = glyph_transforms.random_affine(ring, np.random.default_rng(7))
  np.testing.assert_array_equal(
      first, glyph_transforms.random_affine(ring, np.random.default_rng(7)))
  outputs = {glyph_transforms.random_affine(
      ring, np.random.default_rng(seed)).tobytes() for seed in range(10)}
  assert len(outputs) == 10
  assert not np.array_equal(first, ring)


@pytest.mark.parametrize('ranges', [{}, _WIDE, _STILL])
def test_random_affine_draws_five_uniforms_whatever_the_ranges(ranges):
  rng = np.random.default_rng(11)
  glyph_transforms.random_affine(_ring(), rng, **ranges)
  reference = np.random.default_rng(11)
  reference.uniform(size=5)
  assert rng.bit_generator.state == reference.bit_generator.state


# --- random_stroke. ----------------------------------------------------------


def _windows(image, reduce):
  """`reduce` over each 3 x 3 window, the frame's edge pixels extended."""
  h, w = image.shape[:2]
  padded = np.pad(image, [(1, 1), (1, 1)] + [(0, 0)] * (image.ndim - 2),
                  mode='edge')
  return reduce(np.stack([padded[i:i + h, j:j + w]
                          for i in range(3) for j in range(3)]), axis=0)


def _stroke_draws(seed, p):
  """`(changes, thickens)` from `random_stroke`'s documented draws."""
  rng = np.random.default_rng(seed)
  return rng.random() < p, rng.random() < 0.5


@pytest.mark.parametrize('image', [_cross(), _cross(24, 30)[..., None],
                                   np.stack([_cross(), _ring(),
                                             _cross()[::-1]], axis=-1)],
                         ids=['hw', 'hw1', 'rgb'])
def test_stroke_is_grey_dilation_or_erosion(image):
  seen = set()
  for seed in range(12):
    _, thickens = _stroke_draws(seed, 1.0)
    seen.add(thickens)
    got = glyph_transforms.random_stroke(image, np.random.default_rng(seed),
                                         p=1.0)
    assert got.shape == image.shape and got.dtype == np.uint8
    if thickens:
      np.testing.assert_array_equal(got, _windows(image, np.max))
      assert got.sum(dtype=np.int64) > image.sum(dtype=np.int64)
      assert (got >= image).all()
    else:
      np.testing.assert_array_equal(got, _windows(image, np.min))
      assert got.sum(dtype=np.int64) < image.sum(dtype=np.int64)
      assert (got <= image).all()
  assert seen == {True, False}


def test_stroke_p_zero_never_changes_and_p_one_always_changes():
  cross = _cross()
  for seed in range(20):
    assert glyph_transforms.random_stroke(
        cross, np.random.default_rng(seed), p=0.0) is cross
    changed = glyph_transforms.random_stroke(
        cross, np.random.default_rng(seed), p=1.0)
    assert not np.array_equal(changed, cross)


def test_stroke_changes_exactly_when_the_first_draw_is_below_p():
  cross = _cross()
  changes = []
  for seed in range(40):
    rng = np.random.default_rng(seed)
    got = glyph_transforms.random_stroke(cross, rng, p=0.3)
    reference = np.random.default_rng(seed)
    changes.append(reference.random() < 0.3)
    reference.random()
    assert (got is not cross) == changes[-1]
    # Two draws, whatever p and the outcome.
    assert rng.bit_generator.state == reference.bit_generator.state
  assert 0 < sum(changes) < len(changes)


def test_thinning_never_erases_a_one_pixel_stroke():
  line = np.zeros((32, 32), np.uint8)
  line[4:28, 16] = 255
  line[27, 10:17] = 255  # an L, one pixel wide
  assert not _windows(line, np.min).any()  # erosion erases it all
  seen = set()
  for seed in range(12):
    _, thickens = _stroke_draws(seed, 1.0)
    seen.add(thickens)
    got = glyph_transforms.random_stroke(line, np.random.default_rng(seed),
                                         p=1.0)
    if thickens:
      np.testing.assert_array_equal(got, _windows(line, np.max))
    else:
      assert got is line
  assert seen == {True, False}


def test_thinning_that_keeps_some_ink_is_kept():
  # A 3-pixel-wide bar thins to its 1-pixel core: a third of the ink.
  bar = np.zeros((32, 32), np.uint8)
  bar[4:28, 15:18] = 255
  thinning_seed = next(s for s in range(20) if not _stroke_draws(s, 1.0)[1])
  got = glyph_transforms.random_stroke(
      bar, np.random.default_rng(thinning_seed), p=1.0)
  np.testing.assert_array_equal(got, _windows(bar, np.min))
  assert got[5:27, 16].all() and got.sum() == 255 * 22


# --- The recipes. ------------------------------------------------------------


@pytest.mark.parametrize('shape', [(32, 32), (32, 32, 1), (20, 24),
                                   (48, 40, 1), (8, 8, 3)])
def test_recipes_shape_dtype_and_range(shape):
  image = transforms.resize(_ring(), shape[:2])
  if len(shape) == 3:
    image = np.repeat(image[..., None], shape[2], axis=2)
  for channels in (1, 3):
    stats = dict(mean=(0.5,) * channels, std=(0.5,) * channels,
                 channels=channels)
    for got in (glyph_transforms.GlyphTrainTransform(**stats)(
        image, np.random.default_rng(0)),
                glyph_transforms.GlyphEvalTransform(**stats)(image)):
      assert got.shape == (32, 32, channels) and got.dtype == np.float32
      assert got.min() >= -1.0 and got.max() <= 1.0


@pytest.mark.parametrize('shape', [(32, 32), (20, 24), (48, 40, 1)])
def test_eval_is_deterministic_normalize_of_resize(shape):
  image = transforms.resize(_ring(), shape[:2]).reshape(shape)
  evaluate = glyph_transforms.GlyphEvalTransform()
  expected = transforms.normalize(transforms.resize(image, 32), (0.5,), (0.5,),
                                  channels=1)
  np.testing.assert_array_equal(evaluate(image), expected)
  np.testing.assert_array_equal(evaluate(image), evaluate(image))
  if shape[:2] == (32, 32):
    np.testing.assert_array_equal(
        expected, transforms.normalize(image, (0.5,), (0.5,), channels=1))


@pytest.mark.parametrize('seed', range(8))
def test_train_is_resize_affine_stroke_normalize_in_that_order(seed):
  image = transforms.resize(_ring(), (40, 36))
  rng = np.random.default_rng(seed)
  got = glyph_transforms.GlyphTrainTransform(size=32, **_WIDE)(image, rng)
  reference = np.random.default_rng(seed)
  expected = glyph_transforms.random_affine(transforms.resize(image, 32),
                                            reference, **_WIDE)
  expected = glyph_transforms.random_stroke(expected, reference)
  np.testing.assert_array_equal(
      got, transforms.normalize(expected, (0.5,), (0.5,), channels=1))
  # Five uniforms, then two for the stroke.
  advanced = np.random.default_rng(seed)
  advanced.uniform(size=5)
  advanced.random(2)
  assert rng.bit_generator.state == advanced.bit_generator.state


def test_train_without_augmentation_is_eval():
  image = transforms.resize(_ring(), (24, 20))
  still = glyph_transforms.GlyphTrainTransform(**_STILL, stroke_p=0.0)
  expected = glyph_transforms.GlyphEvalTransform()(image)
  for seed in range(5):
    np.testing.assert_array_equal(still(image, np.random.default_rng(seed)),
                                  expected)
  train = glyph_transforms.GlyphTrainTransform()
  first = train(image, np.random.default_rng(3))
  np.testing.assert_array_equal(first, train(image, np.random.default_rng(3)))
  assert not np.array_equal(first, train(image, np.random.default_rng(4)))
  assert not np.array_equal(first, expected)


def test_recipes_are_frozen_with_checked_fields():
  train = glyph_transforms.GlyphTrainTransform(scale=[0.9, 1], max_shear=0,
                                               mean=[0.5], std=np.array([1]))
  assert train.scale == (0.9, 1.0) and train.mean == (0.5,)
  assert train.std == (1.0,) and type(train.max_shear) is float
  assert (train.size, train.max_rotation, train.max_shift,
          train.stroke_p, train.channels) == (32, 10.0, 0.08, 0.5, 1)
  with pytest.raises(AttributeError):
    train.size = 3
  with pytest.raises(AttributeError):
    glyph_transforms.GlyphEvalTransform().channels = 3


def test_recipes_plug_into_the_pipeline():
  train = datasets.load_split('digits', 'train')

  def batches():
    sampler = ClassBalancedSampler(train.labels, classes_per_batch=4,
                                   samples_per_class=3)
    return pipeline.TrainBatches(
        train, sampler, glyph_transforms.GlyphTrainTransform(size=16),
        options=pipeline.LoaderOptions(num_threads=2))

  first, again = next(batches()), next(batches())
  assert first['image'].shape == (12, 16, 16, 1)
  assert first['image'].dtype == np.float32
  np.testing.assert_array_equal(first['image'], again['image'])
  evaluated = next(pipeline.eval_batches(
      train, glyph_transforms.GlyphEvalTransform(size=16), batch_size=10))
  assert evaluated['image'].shape == (10, 16, 16, 1)


# --- Bad inputs. -------------------------------------------------------------

_RNG = np.random.default_rng(0)
_OK = np.zeros((8, 8), np.uint8)


@pytest.mark.parametrize('call, message', [
    (lambda: glyph_transforms.affine(_OK, scale=0.0),
     'scale must be a finite number > 0, got 0.0.'),
    (lambda: glyph_transforms.affine(_OK, scale=-1),
     'scale must be a finite number > 0, got -1.'),
    (lambda: glyph_transforms.affine(_OK, rotation=math.nan),
     'rotation must be a finite number, got nan.'),
    (lambda: glyph_transforms.affine(_OK, shear='0.1'),
     "shear must be a finite number, got '0.1'."),
    (lambda: glyph_transforms.affine(_OK, dx=math.inf),
     'dx must be a finite number, got inf.'),
    (lambda: glyph_transforms.affine(_OK, dy=True),
     'dy must be a finite number, got True.'),
    # Once let through: a numbers.Real that is neither a Python nor a NumPy
    # number.
    (lambda: glyph_transforms.affine(_OK, rotation=fractions.Fraction(1, 2)),
     'rotation must be a finite number, got Fraction(1, 2).'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, max_rotation=-1.0),
     'max_rotation must be a number of degrees in [0, 180], got -1.0.'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, max_rotation=181),
     'max_rotation must be a number of degrees in [0, 180], got 181.'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, scale=(1.2, 0.8)),
     'scale must satisfy 0 < low <= high <= inf, got (1.2, 0.8).'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, scale=(0.0, 1.0)),
     'scale must satisfy 0 < low <= high <= inf, got (0.0, 1.0).'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, scale=0.9),
     'scale must be a pair (low, high), got 0.9.'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, max_shear=-0.1),
     'max_shear must be a finite number >= 0, got -0.1.'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, max_shear=math.inf),
     'max_shear must be a finite number >= 0, got inf.'),
    (lambda: glyph_transforms.random_affine(_OK, _RNG, max_shift=1.5),
     'max_shift must be a fraction of the side in [0, 1], got 1.5.'),
    (lambda: glyph_transforms.random_affine(_OK, np.random.RandomState(0)),
     'rng must be a numpy.random.Generator, got RandomState(MT19937)'),
    (lambda: glyph_transforms.random_stroke(_OK, _RNG, p=1.5),
     'p must be a probability in [0, 1], got 1.5.'),
    (lambda: glyph_transforms.random_stroke(_OK, _RNG, p=None),
     'p must be a probability in [0, 1], got None.'),
    (lambda: glyph_transforms.random_stroke(_OK, 0),
     'rng must be a numpy.random.Generator, got 0.'),
    (lambda: glyph_transforms.GlyphTrainTransform(size=0),
     'size must be an integer >= 1, got 0.'),
    (lambda: glyph_transforms.GlyphTrainTransform(max_rotation=200.0),
     'max_rotation must be a number of degrees in [0, 180], got 200.0.'),
    (lambda: glyph_transforms.GlyphTrainTransform(scale=(1.0, 0.5)),
     'scale must satisfy 0 < low <= high <= inf, got (1.0, 0.5).'),
    (lambda: glyph_transforms.GlyphTrainTransform(max_shear=-1),
     'max_shear must be a finite number >= 0, got -1.'),
    (lambda: glyph_transforms.GlyphTrainTransform(max_shift=-0.1),
     'max_shift must be a fraction of the side in [0, 1], got -0.1.'),
    (lambda: glyph_transforms.GlyphTrainTransform(stroke_p=2.0),
     'stroke_p must be a probability in [0, 1], got 2.0.'),
    (lambda: glyph_transforms.GlyphTrainTransform(channels=3),
     'mean must have one value per output channel (3), got 1: (0.5,).'),
    (lambda: glyph_transforms.GlyphTrainTransform(std=(0.0,)),
     'std must be positive, got (0.0,).'),
    (lambda: glyph_transforms.GlyphEvalTransform(size=2.5),
     'size must be an integer >= 1, got 2.5.'),
    (lambda: glyph_transforms.GlyphEvalTransform(channels=2),
     'channels must be one of [1, 3], got 2.'),
])
def test_bad_arguments_raise(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


@pytest.mark.parametrize('image', [
    np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.uint8),
    np.zeros(8, np.uint8), np.zeros((0, 8), np.uint8)])
@pytest.mark.parametrize('transform', [
    glyph_transforms.affine,
    lambda x: glyph_transforms.random_affine(x, np.random.default_rng(0)),
    lambda x: glyph_transforms.random_stroke(x, np.random.default_rng(0)),
    lambda x: glyph_transforms.GlyphTrainTransform()(
        x, np.random.default_rng(0)),
    glyph_transforms.GlyphEvalTransform()])
def test_bad_images_raise(image, transform):
  message = f'got shape {image.shape} and dtype {image.dtype}.'
  with pytest.raises(ValueError, match=re.escape(message)):
    transform(image)
