"""Datasets, open-world class splits, class-balanced batches and transforms.

The datasets by name (`load_split`: the paper's TFDS datasets, the embedded
digits, synthetic data, rendered glyphs) with their open-world class splits,
the class-balanced sampler (P classes x K samples per batch), the image
transforms, and the grain pipeline that turns a split into batches.

`tcm_jax.data.glyphs` (the glyph benchmark, also a command line: `python -m
tcm_jax.data.glyphs`) is imported when first used. Importing this package
needs the `data` extra (grain, TFDS's file layer, Pillow); `import tcm_jax`
does not import it.

Examples:
  >>> from tcm_jax import data
  >>> split = data.load_split('digits', 'test')
  >>> batch = next(iter(data.eval_batches(
  ...     split, data.SmallEvalTransform(size=8), batch_size=12)))
  >>> sorted(batch), batch['image'].shape
  (['image', 'index', 'label', 'mask'], (12, 8, 8, 3))
"""

import importlib

from tcm_jax.data.datasets import DATASETS
from tcm_jax.data.datasets import DatasetNotPreparedError
from tcm_jax.data.datasets import DatasetSpec
from tcm_jax.data.datasets import load_split
from tcm_jax.data.datasets import prepare_command
from tcm_jax.data.datasets import read_class_list
from tcm_jax.data.datasets import record_image
from tcm_jax.data.datasets import Split
from tcm_jax.data.datasets import SyntheticRecords
from tcm_jax.data.glyph_transforms import affine
from tcm_jax.data.glyph_transforms import GlyphEvalTransform
from tcm_jax.data.glyph_transforms import GlyphTrainTransform
from tcm_jax.data.glyph_transforms import random_affine
from tcm_jax.data.glyph_transforms import random_stroke
from tcm_jax.data.pipeline import eval_batches
from tcm_jax.data.pipeline import LoaderOptions
from tcm_jax.data.pipeline import TrainBatches
from tcm_jax.data.sampler import ClassBalancedSampler
from tcm_jax.data.transforms import center_crop
from tcm_jax.data.transforms import EvalTransform
from tcm_jax.data.transforms import horizontal_flip
from tcm_jax.data.transforms import IMAGENET_MEAN
from tcm_jax.data.transforms import IMAGENET_STD
from tcm_jax.data.transforms import normalize
from tcm_jax.data.transforms import random_resized_crop
from tcm_jax.data.transforms import random_resized_crop_box
from tcm_jax.data.transforms import random_translate
from tcm_jax.data.transforms import resize
from tcm_jax.data.transforms import resize_shorter
from tcm_jax.data.transforms import SmallEvalTransform
from tcm_jax.data.transforms import SmallTrainTransform
from tcm_jax.data.transforms import TrainTransform
from tcm_jax.data.transforms import translate

__all__ = [
    'DATASETS',
    'ClassBalancedSampler',
    'DatasetNotPreparedError',
    'DatasetSpec',
    'EvalTransform',
    'GlyphEvalTransform',
    'GlyphTrainTransform',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'LoaderOptions',
    'SmallEvalTransform',
    'SmallTrainTransform',
    'Split',
    'SyntheticRecords',
    'TrainBatches',
    'TrainTransform',
    'affine',
    'center_crop',
    'eval_batches',
    'horizontal_flip',
    'load_split',
    'normalize',
    'prepare_command',
    'random_affine',
    'random_resized_crop',
    'random_resized_crop_box',
    'random_stroke',
    'random_translate',
    'read_class_list',
    'record_image',
    'resize',
    'resize_shorter',
    'translate',
]


def __getattr__(name: str):
  """`tcm_jax.data.glyphs`, imported when first used.

  Importing it with the package would make `python -m tcm_jax.data.glyphs`
  run a module already imported (runpy warns about that).
  """
  if name == 'glyphs':
    return importlib.import_module(f'{__name__}.glyphs')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
