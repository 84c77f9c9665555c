"""Per-sample transforms against torchvision and hand-computed values.

torchvision's outputs for seeded images and explicit parameters are stored in
tests/fixtures (made by scripts/make_reference_fixtures.py), so the comparisons
run without PyTorch; with the `reference` extra installed, the live comparisons
run too.
"""

import math
import re

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import PIL
from PIL import Image
import pytest

from tcm_jax.data import _image_ops
from tcm_jax.data import transforms
from tests.fixtures import reference_cases as rc

_STORED = rc.load(rc.TORCHVISION)
# torchvision resizes with Pillow, as tcm_jax does: a fixture holds for the
# Pillow that made it.
_PILLOW = (f'torchvision ran on Pillow {rc.manifest()["versions"]["pillow"]} '
           f'(tests/fixtures/manifest.json), this test on {PIL.__version__}')


def _image(seed, shape):
  return rc.uint8_image(seed, shape)


def _digit(seed):
  """An 8x8 handwritten-digit-like image: 0..16 ink scaled to 0..255."""
  return rc.digit(seed)


def _torch_normalized(tensor):
  """A torchvision CHW float tensor as an HWC array."""
  return tensor.numpy().transpose(1, 2, 0)


def _fallback_box(height, width, ratio):
  """torchvision's central fallback box, sides kept >= 1."""
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, max(1, round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = max(1, round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _box_key(shape, box, size):
  return f'box/{rc.shape_key(shape)}/{rc.shape_key(box)}/{size}'


# --- Against torchvision's stored outputs (tests/fixtures). ------------------
# The outputs of 224 pixels are stored on every 2nd row and column
# (reference_cases.kept); ToTensor + Normalize through torchvision's per-value
# table (reference_cases.normalized), which the script checked is exact.


@pytest.mark.parametrize('shape', rc.EVAL_SHAPES)
def test_eval_transform_matches_stored_torchvision(shape):
  got = transforms.EvalTransform()(_image(sum(shape), shape))
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  expected = rc.normalized(_STORED['lut/imagenet'],
                           _STORED[f'eval/{rc.shape_key(shape)}'])
  np.testing.assert_allclose(rc.kept(got), expected, rtol=0, atol=1e-6,
                             err_msg=_PILLOW)


@pytest.mark.parametrize('shape', rc.GRAY_EVAL_SHAPES)
def test_grayscale_eval_transform_matches_stored_torchvision(shape):
  got = transforms.EvalTransform(mean=rc.GRAY_MEAN, std=rc.GRAY_STD,
                                 channels=1)(_image(1, shape))
  assert got.shape == (224, 224, 1)
  expected = rc.normalized(_STORED['lut/gray'],
                           _STORED[f'gray_eval/{rc.shape_key(shape)}'])
  np.testing.assert_allclose(rc.kept(got), expected, rtol=0, atol=1e-6,
                             err_msg=_PILLOW)


@pytest.mark.parametrize('box', rc.BOXES)
@pytest.mark.parametrize('shape', rc.BOX_SHAPES)
@pytest.mark.parametrize('size', rc.BOX_SIZES)
def test_resized_box_matches_stored_torchvision_resized_crop(box, shape, size):
  top, left, h, w = box
  got = transforms.resize(_image(2, shape)[top:top + h, left:left + w], size)
  assert got.shape == (size, size) + shape[2:] and got.dtype == np.uint8
  np.testing.assert_array_equal(rc.kept(got),
                                _STORED[_box_key(shape, box, size)],
                                err_msg=_PILLOW)


@pytest.mark.parametrize('box', rc.BOXES)
def test_train_transform_is_stored_torchvision_on_the_drawn_box(monkeypatch,
                                                                 box):
  # Whatever box random_resized_crop_box draws (here: one of the stored ones),
  # TrainTransform is torchvision's resized_crop of it, ToTensor, Normalize.
  draws = []

  def drawn(*args, **kwargs):
    draws.append(real(*args, **kwargs))  # checks the arguments, draws
    return box

  real = _image_ops.random_resized_crop_box
  monkeypatch.setattr(_image_ops, 'random_resized_crop_box', drawn)
  shape = rc.BOX_SHAPES[0]
  image = _image(2, shape)
  got = transforms.TrainTransform(flip=False)(image, np.random.default_rng(0))
  assert len(draws) == 1 and got.shape == (224, 224, 3)
  crop = _STORED[_box_key(shape, box, 224)]
  np.testing.assert_allclose(rc.kept(got),
                             rc.normalized(_STORED['lut/imagenet'], crop),
                             rtol=0, atol=1e-6, err_msg=_PILLOW)
  np.testing.assert_array_equal(
      rc.kept(transforms.random_resized_crop(image, 224,
                                             np.random.default_rng(0))),
      crop, err_msg=_PILLOW)


@pytest.mark.parametrize('shape, scale, ratio', rc.FALLBACK_CASES)
def test_fallback_box_matches_stored_torchvision(shape, scale, ratio):
  # No random box fits these, so torchvision's answer is deterministic.
  expected = tuple(int(v) for v in _STORED[rc.fallback_key(shape, scale,
                                                           ratio)])
  for seed in range(3):
    got = transforms.random_resized_crop_box(
        *shape, np.random.default_rng(seed), scale=scale, ratio=ratio)
    assert got == expected


def _box_statistics(boxes, height, width):
  """Area fraction, log aspect ratio, relative top, relative left."""
  top, left, h, w = np.asarray(boxes, np.float64).T
  return np.stack([h * w / (height * width), np.log(w / h),
                   top / np.maximum(height - h, 1),
                   left / np.maximum(width - w, 1)])


def _assert_same_box_distribution(ours, theirs):
  # About 4.5 standard errors of a difference of two statistics of n draws
  # (area fraction, log aspect ratio, relative top, relative left).
  atol = np.array([0.03, 0.02, 0.03, 0.03])
  np.testing.assert_array_less(
      np.abs(ours.mean(axis=1) - theirs.mean(axis=1)), atol)
  for q in (0.1, 0.5, 0.9):
    np.testing.assert_array_less(
        np.abs(np.quantile(ours, q, axis=1) - np.quantile(theirs, q, axis=1)),
        1.5 * atol)


def test_crop_box_distribution_matches_stored_torchvision():
  # torchvision's own draws (get_params at its defaults), stored.
  d = rc.DISTRIBUTION
  theirs = _STORED['distribution/boxes']
  assert theirs.shape == (d['draws'], 4)
  rng = np.random.default_rng(0)
  ours = [transforms.random_resized_crop_box(d['height'], d['width'], rng)
          for _ in range(d['draws'])]
  _assert_same_box_distribution(
      _box_statistics(ours, d['height'], d['width']),
      _box_statistics(theirs, d['height'], d['width']))


def test_small_eval_transform_matches_stored_torchvision():
  got = transforms.SmallEvalTransform()(_digit(rc.SMALL_DIGIT_SEED))
  assert got.shape == (32, 32, 3)
  for c in range(3):
    np.testing.assert_allclose(got[..., c], _STORED['small_eval'], rtol=0,
                               atol=1e-6, err_msg=_PILLOW)


# --- Against torchvision itself (live, with the reference extra). ------------


@pytest.mark.parametrize('shape', rc.EVAL_SHAPES)
def test_eval_transform_matches_torchvision(shape):
  T = pytest.importorskip('torchvision.transforms')
  image = _image(sum(shape), shape)
  expected = T.Compose([
      T.Resize(256), T.CenterCrop(224), T.ToTensor(),
      T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)])(
          Image.fromarray(image))
  got = transforms.EvalTransform()(image)
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, _torch_normalized(expected), rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize('shape', rc.GRAY_EVAL_SHAPES)
def test_grayscale_eval_transform_matches_torchvision(shape):
  T = pytest.importorskip('torchvision.transforms')
  image = _image(1, shape)
  expected = T.Compose([
      T.Resize(256), T.CenterCrop(224), T.ToTensor(),
      T.Normalize(rc.GRAY_MEAN, rc.GRAY_STD)])(
          Image.fromarray(image.reshape(shape[:2])))
  got = transforms.EvalTransform(mean=rc.GRAY_MEAN, std=rc.GRAY_STD,
                                 channels=1)(image)
  assert got.shape == (224, 224, 1)
  np.testing.assert_allclose(got, _torch_normalized(expected), rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize('box', rc.BOXES)
@pytest.mark.parametrize('shape', rc.BOX_SHAPES)
@pytest.mark.parametrize('size', rc.BOX_SIZES)
def test_resized_box_matches_torchvision_resized_crop(box, shape, size):
  F = pytest.importorskip('torchvision.transforms.functional')
  image = _image(2, shape)
  top, left, h, w = box
  expected = np.asarray(
      F.resized_crop(Image.fromarray(image), top, left, h, w, [size, size]))
  got = transforms.resize(image[top:top + h, left:left + w], size)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('seed', range(4))
def test_train_transform_is_torchvision_on_the_drawn_box(seed):
  T = pytest.importorskip('torchvision.transforms')
  F = pytest.importorskip('torchvision.transforms.functional')
  image = _image(seed, (300, 257, 3))
  box = transforms.random_resized_crop_box(300, 257,
                                           np.random.default_rng(seed))
  crop = F.resized_crop(Image.fromarray(image), *box, [224, 224])
  expected = T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)(
      T.ToTensor()(crop))
  got = transforms.TrainTransform(flip=False)(image,
                                              np.random.default_rng(seed))
  np.testing.assert_allclose(got, _torch_normalized(expected), rtol=0,
                             atol=1e-6)
  np.testing.assert_array_equal(
      transforms.random_resized_crop(image, 224, np.random.default_rng(seed)),
      np.asarray(crop))


@pytest.mark.parametrize('shape, scale, ratio', rc.FALLBACK_CASES)
def test_fallback_box_matches_torchvision(shape, scale, ratio):
  # No random box fits these, so torchvision's answer is deterministic.
  torch = pytest.importorskip('torch')
  T = pytest.importorskip('torchvision.transforms')
  expected = T.RandomResizedCrop.get_params(torch.zeros((1,) + shape),
                                            list(scale), list(ratio))
  for seed in range(3):
    got = transforms.random_resized_crop_box(
        *shape, np.random.default_rng(seed), scale=scale, ratio=ratio)
    assert got == tuple(expected)


def test_crop_box_distribution_matches_torchvision():
  torch = pytest.importorskip('torch')
  T = pytest.importorskip('torchvision.transforms')
  height, width, n = 300, 257, 3000
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  image = torch.zeros((1, height, width))
  ours = [transforms.random_resized_crop_box(height, width, rng)
          for _ in range(n)]
  theirs = [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(n)]
  _assert_same_box_distribution(_box_statistics(ours, height, width),
                                _box_statistics(theirs, height, width))


def test_small_eval_transform_matches_torchvision():
  T = pytest.importorskip('torchvision.transforms')
  digit = _digit(rc.SMALL_DIGIT_SEED)
  expected = T.Compose([T.Resize((32, 32)), T.ToTensor(),
                        T.Normalize([0.5], [0.5])])(Image.fromarray(digit))
  got = transforms.SmallEvalTransform()(digit)
  for c in range(3):
    np.testing.assert_allclose(got[..., c], expected.numpy()[0], rtol=0,
                               atol=1e-6)


# --- Crop-box properties. ---------------------------------------------------

_SCALES = st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted)
_RATIOS = st.tuples(st.floats(0.05, 20.0), st.floats(0.05, 20.0)).map(sorted)


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 3000), width=st.integers(1, 3000),
       scale=_SCALES, ratio=_RATIOS, seed=st.integers(0, 2**32 - 1))
def test_crop_box_is_inside_nonempty_and_in_range(height, width, scale,
                                                  ratio, seed):
  box = transforms.random_resized_crop_box(
      height, width, np.random.default_rng(seed), scale=scale, ratio=ratio)
  top, left, h, w = box
  assert all(type(v) is int for v in box)
  assert h >= 1 and w >= 1
  assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
  if box != _fallback_box(height, width, ratio):
    # A drawn box: its real sides, within 0.5 of (h, w), have an area
    # fraction in `scale` and an aspect ratio in `ratio`.
    area, slack = height * width, 1 + 1e-9
    assert (h + 0.5) * (w + 0.5) * slack >= scale[0] * area
    assert (h - 0.5) * (w - 0.5) <= scale[1] * area * slack
    assert (w + 0.5) / (h - 0.5) * slack >= ratio[0]
    assert (w - 0.5) / (h + 0.5) <= ratio[1] * slack


def test_crop_box_with_a_single_scale_and_ratio():
  for seed in range(5):
    rng = np.random.default_rng(seed)
    top, left, h, w = transforms.random_resized_crop_box(
        100, 120, rng, scale=(0.25, 0.25), ratio=(1.2, 1.2))
    # Area 3000 at width / height 1.2: 60 x 50.
    assert (h, w) == (50, 60)
    assert 0 <= top <= 50 and 0 <= left <= 60
  assert transforms.random_resized_crop_box(
      7, 7, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (0, 0, 7, 7)


@pytest.mark.parametrize('shape', [(40, 50), (40, 50, 1), (40, 50, 3)])
def test_random_resized_crop_keeps_the_layout(shape):
  got = transforms.random_resized_crop(_image(0, shape), 16,
                                       np.random.default_rng(0))
  assert got.shape == (16, 16) + shape[2:] and got.dtype == np.uint8


# --- Determinism. -----------------------------------------------------------


def test_same_seed_same_output_different_seeds_different_crops():
  image = _image(3, (300, 257, 3))
  train = transforms.TrainTransform()
  first = train(image, np.random.default_rng(7))
  np.testing.assert_array_equal(first, train(image, np.random.default_rng(7)))
  boxes = {transforms.random_resized_crop_box(300, 257,
                                              np.random.default_rng(seed))
           for seed in range(10)}
  assert len(boxes) == 10
  assert not np.array_equal(first, train(image, np.random.default_rng(8)))
  rng = np.random.default_rng(7)
  train(image, rng)
  # The generator advanced: the next sample differs.
  assert not np.array_equal(first, train(image, rng))


def test_eval_transform_is_deterministic():
  image = _image(4, (120, 90, 3))
  evaluate = transforms.EvalTransform(size=64, resize=72)
  np.testing.assert_array_equal(evaluate(image), evaluate(image))


# --- Flip. ------------------------------------------------------------------


def test_flip_mirrors_columns():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
  np.testing.assert_array_equal(
      transforms.horizontal_flip(image, np.random.default_rng(0), p=1.0),
      [[3, 2, 1], [6, 5, 4]])
  rgb = _image(5, (6, 9, 3))
  flipped = transforms.horizontal_flip(rgb, np.random.default_rng(0), p=1.0)
  for j in range(9):
    np.testing.assert_array_equal(flipped[:, j], rgb[:, 8 - j])


def test_flip_happens_exactly_when_the_draw_is_below_p():
  image = _image(6, (4, 5, 3))
  outcomes = []
  for seed in range(40):
    for p in (0.0, 0.3, 1.0):
      rng = np.random.default_rng(seed)
      got = transforms.horizontal_flip(image, rng, p=p)
      reference = np.random.default_rng(seed)
      should_flip = reference.random() < p
      expected = image[:, ::-1] if should_flip else image
      np.testing.assert_array_equal(got, expected)
      # One draw, whatever p.
      assert rng.random() == reference.random()
      if p == 0.3:
        outcomes.append(should_flip)
  assert 0 < sum(outcomes) < len(outcomes)


def test_train_transform_flips_after_drawing_the_box():
  image = _image(7, (80, 90, 3))
  flipped = []
  for seed in range(20):
    reference = np.random.default_rng(seed)
    crop = transforms.random_resized_crop(image, 32, reference)
    should_flip = reference.random() < 0.5
    flipped.append(should_flip)
    expected = transforms.normalize(crop[:, ::-1] if should_flip else crop)
    got = transforms.TrainTransform(size=32)(image,
                                             np.random.default_rng(seed))
    np.testing.assert_array_equal(got, expected)
  assert 0 < sum(flipped) < 20


# --- Resizing and cropping. -------------------------------------------------


@pytest.mark.parametrize('shape, expected', [
    ((300, 257), (298, 256)), ((225, 400), (256, 455)),
    ((256, 256), (256, 256)), ((10, 20), (256, 512))])
def test_resize_shorter_sizes(shape, expected):
  assert transforms.resize_shorter(_image(0, shape), 256).shape == expected


def test_center_crop_offsets_round_half_to_even():
  image = np.arange(5 * 8, dtype=np.uint8).reshape(5, 8)
  # (5 - 2) / 2 = 1.5 -> 2 (not floor's 1), on both axes.
  np.testing.assert_array_equal(transforms.center_crop(image[:, :5], 2),
                                [[18, 19], [26, 27]])
  # (8 - 3) / 2 = 2.5 -> 2 (not half-up's 3).
  np.testing.assert_array_equal(transforms.center_crop(image[:3], 3),
                                [[2, 3, 4], [10, 11, 12], [18, 19, 20]])


# --- Normalisation. ---------------------------------------------------------


def test_normalize_imagenet_by_hand():
  got = transforms.normalize(np.array([[[0, 128, 255]]], np.uint8))
  assert got.dtype == np.float32 and got.shape == (1, 1, 3)
  np.testing.assert_allclose(got[0, 0], [-2.1179039, 0.2051821, 2.64],
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize('shape', [(1, 2), (1, 2, 1)])
def test_normalize_replicates_grayscale(shape):
  image = np.array([0, 51], np.uint8).reshape(shape)
  got = transforms.normalize(image, mean=(0.1, 0.2, 0.3), std=(0.5,) * 3)
  np.testing.assert_allclose(got, [[[-0.2, -0.4, -0.6], [0.2, 0.0, -0.2]]],
                             rtol=0, atol=1e-6)


def test_normalize_to_one_channel():
  rgb = np.array([[[255, 0, 0], [10, 20, 30]]], np.uint8)
  got = transforms.normalize(rgb, mean=(0.0,), std=(1.0,), channels=1)
  np.testing.assert_allclose(got, [[[0.299], [18.15 / 255]]], rtol=0,
                             atol=1e-6)
  gray = np.array([[0, 255]], np.uint8)
  np.testing.assert_allclose(
      transforms.normalize(gray, mean=(0.5,), std=(0.5,), channels=1),
      [[[-1.0], [1.0]]])


# --- Small images. ----------------------------------------------------------


@pytest.mark.parametrize('shape', [(8, 8), (8, 8, 1), (8, 8, 3)])
def test_small_transforms_shape_and_dtype(shape):
  digit = _digit(0)
  image = np.repeat(digit[..., None], shape[2], axis=2) if shape[2:] else digit
  for got in (transforms.SmallTrainTransform()(image,
                                               np.random.default_rng(0)),
              transforms.SmallEvalTransform()(image)):
    assert got.shape == (32, 32, 3) and got.dtype == np.float32


def test_small_train_transform_shifts_by_the_drawn_offset():
  digit = _digit(2)
  resized = np.asarray(Image.fromarray(digit).resize(
      (32, 32), Image.Resampling.BILINEAR)).astype(np.float32)
  padded = np.pad(resized, 4)
  train = transforms.SmallTrainTransform()
  assert train.max_shift == 4 and not train.flip
  offsets = set()
  for seed in range(30):
    dy, dx = np.random.default_rng(seed).integers(-4, 4, size=2, endpoint=True)
    offsets.add((int(dy), int(dx)))
    # out[y, x] = resized[y - dy, x - dx], and 0 (background) off the image.
    shifted = padded[4 - dy:4 - dy + 32, 4 - dx:4 - dx + 32]
    expected = (shifted / 255 - 0.5) / 0.5
    got = train(digit, np.random.default_rng(seed))
    for c in range(3):
      np.testing.assert_allclose(got[..., c], expected, rtol=0, atol=1e-6)
  assert len(offsets) > 10 and all(abs(v) <= 4 for o in offsets for v in o)


def test_small_train_transform_flip_is_opt_in():
  digit = _digit(3)
  assert transforms.SmallTrainTransform(size=64).max_shift == 8
  still = transforms.SmallTrainTransform(max_shift=0)
  flipping = transforms.SmallTrainTransform(max_shift=0, flip=True)
  expected = transforms.SmallEvalTransform()(digit)
  flipped = []
  for seed in range(20):
    np.testing.assert_array_equal(still(digit, np.random.default_rng(seed)),
                                  expected)
    got = flipping(digit, np.random.default_rng(seed))
    reference = np.random.default_rng(seed)
    reference.integers(0, 0, size=2, endpoint=True)  # the zero shift
    should_flip = reference.random() < 0.5
    flipped.append(should_flip)
    np.testing.assert_array_equal(
        got, expected[:, ::-1] if should_flip else expected)
  assert 0 < sum(flipped) < 20


def test_translate_by_hand():
  image = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
  np.testing.assert_array_equal(transforms.translate(image, 0, 1),
                                [[0, 1, 2], [0, 4, 5]])
  np.testing.assert_array_equal(transforms.translate(image, -1, -2),
                                [[6, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(transforms.translate(image, 0, 0), image)
  for dy, dx in ((2, 0), (0, -3), (9, 9), (-9, 1)):
    np.testing.assert_array_equal(transforms.translate(image, dy, dx), 0)


# --- Bad inputs. ------------------------------------------------------------

_RNG = np.random.default_rng(0)
_OK = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize('call, message', [
    (lambda: transforms.random_resized_crop_box(0, 5, _RNG),
     'height must be an integer >= 1, got 0.'),
    (lambda: transforms.random_resized_crop(_OK, 0, _RNG),
     'size must be an integer >= 1, got 0.'),
    (lambda: transforms.random_resized_crop(_OK, 2.5, _RNG),
     'size must be an integer >= 1, got 2.5.'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, scale=(0.9, 0.1)),
     'scale must satisfy 0 < low <= high <= 1.0, got (0.9, 0.1).'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, scale=(0.0, 0.5)),
     'scale must satisfy 0 < low <= high <= 1.0, got (0.0, 0.5).'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, scale=(0.5, 1.5)),
     'scale must satisfy 0 < low <= high <= 1.0, got (0.5, 1.5).'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, ratio=(2.0, 1.0)),
     'ratio must satisfy 0 < low <= high <= inf, got (2.0, 1.0).'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, ratio=(-1.0, 1.0)),
     'ratio must satisfy 0 < low <= high <= inf, got (-1.0, 1.0).'),
    (lambda: transforms.random_resized_crop(_OK, 4, _RNG, ratio=0.5),
     'ratio must be a pair (low, high), got 0.5.'),
    (lambda: transforms.random_resized_crop(_OK, 4, np.random.RandomState(0)),
     'rng must be a numpy.random.Generator, got RandomState(MT19937)'),
    (lambda: transforms.horizontal_flip(_OK, _RNG, p=1.5),
     'p must be a probability in [0, 1], got 1.5.'),
    # Once let through (True as 1), or refused with a TypeError ('0.5').
    (lambda: transforms.horizontal_flip(_OK, _RNG, p=True),
     'p must be a probability in [0, 1], got True.'),
    (lambda: transforms.horizontal_flip(_OK, _RNG, p='0.5'),
     "p must be a probability in [0, 1], got '0.5'."),
    (lambda: transforms.center_crop(_OK, 9),
     'image of shape (8, 8, 3) is smaller than the crop size 9;'),
    (lambda: transforms.random_translate(_OK, _RNG, -1),
     'max_shift must be an integer >= 0, got -1.'),
    (lambda: transforms.translate(_OK, 0.5, 0), 'dy must be an integer'),
    (lambda: transforms.normalize(_OK, mean=(0.5,)),
     'mean must have one value per output channel (3), got 1: (0.5,).'),
    (lambda: transforms.normalize(_OK, std=(0.2, 0.0, 0.2)),
     'std must be positive, got (0.2, 0.0, 0.2).'),
    (lambda: transforms.normalize(_OK, channels=2),
     'channels must be one of [1, 3], got 2.'),
    (lambda: transforms.TrainTransform(size=0),
     'size must be an integer >= 1, got 0.'),
    (lambda: transforms.TrainTransform(scale=(1.0, 0.5)),
     'scale must satisfy 0 < low <= high <= 1.0, got (1.0, 0.5).'),
    (lambda: transforms.TrainTransform(ratio=(0.0, 1.0)),
     'ratio must satisfy 0 < low <= high <= inf, got (0.0, 1.0).'),
    (lambda: transforms.TrainTransform(channels=1),
     'mean must have one value per output channel (1), got 3'),
    (lambda: transforms.TrainTransform(std=(0.2, -0.1, 0.2)),
     'std must be positive, got (0.2, -0.1, 0.2).'),
    (lambda: transforms.EvalTransform(resize=200),
     'resize must be an integer >= 224, got 200.'),
    (lambda: transforms.EvalTransform(size=-3),
     'size must be an integer >= 1, got -3.'),
    (lambda: transforms.EvalTransform(std=(1.0, 1.0)),
     'std must have one value per output channel (3), got 2: (1.0, 1.0).'),
    (lambda: transforms.SmallTrainTransform(max_shift=-1),
     'max_shift must be an integer >= 0, got -1.'),
    (lambda: transforms.SmallTrainTransform(size=0),
     'size must be an integer >= 1, got 0.'),
    (lambda: transforms.SmallEvalTransform(channels=4),
     'channels must be one of [1, 3], got 4.'),
])
def test_bad_arguments_raise(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()


@pytest.mark.parametrize('image', [
    np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.int64),
    np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8, 4), np.uint8),
    np.zeros(8, np.uint8), np.zeros((1, 8, 8, 3), np.uint8),
    np.zeros((0, 8, 3), np.uint8)])
@pytest.mark.parametrize('transform', [
    lambda x: transforms.TrainTransform()(x, np.random.default_rng(0)),
    transforms.EvalTransform(),
    lambda x: transforms.SmallTrainTransform()(x, np.random.default_rng(0)),
    transforms.SmallEvalTransform(), transforms.normalize,
    lambda x: transforms.resize_shorter(x, 4),
    lambda x: transforms.horizontal_flip(x, np.random.default_rng(0))])
def test_bad_images_raise(image, transform):
  message = (f'got shape {image.shape} and dtype {image.dtype}.')
  with pytest.raises(ValueError, match=re.escape(message)):
    transform(image)


def test_transforms_are_frozen_with_checked_fields():
  train = transforms.TrainTransform(mean=[0.5, 0.5, 0.5], scale=[0.2, 1])
  assert train.mean == (0.5, 0.5, 0.5) and train.scale == (0.2, 1.0)
  with pytest.raises(AttributeError):
    train.size = 3
  assert math.isclose(transforms.TrainTransform().ratio[1], 4 / 3)
