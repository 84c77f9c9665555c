"""Datasets, open-world class splits, class-balanced batches and transforms.

The datasets by name (`load_split`: the paper's TFDS datasets, the embedded
digits, synthetic data, rendered glyphs) with their open-world class splits,
the class-balanced sampler (P classes x K samples per batch), the image
transforms, and the grain pipeline that turns a split into batches.

`tcm_jax.data.glyphs` (the glyph benchmark, also a command line: `python -m
tcm_jax.data.glyphs`) is imported when first used. Importing this package
imports none of its modules: each name imports its own when first used (the
datasets need etils, the pipeline grain, the glyph transforms Pillow: the
`data` extra). `import tcm_jax` does not import it.

Examples:
  >>> from tcm_jax import data
  >>> split = data.load_split('digits', 'test')
  >>> batch = next(iter(data.eval_batches(
  ...     split, data.SmallEvalTransform(size=8), batch_size=12)))
  >>> sorted(batch), batch['image'].shape
  (['image', 'index', 'label', 'mask'], (12, 8, 8, 3))
"""

import importlib

# Each public name, with the module (of this package) that defines it.
_EXPORTS = {
    'affine': 'glyph_transforms',
    'center_crop': 'transforms',
    'ClassBalancedSampler': 'sampler',
    'DatasetNotPreparedError': 'datasets',
    'DATASETS': 'datasets',
    'DatasetSpec': 'datasets',
    'eval_batches': 'pipeline',
    'EvalTransform': 'transforms',
    'GlyphEvalTransform': 'glyph_transforms',
    'GlyphTrainTransform': 'glyph_transforms',
    'horizontal_flip': 'transforms',
    'IMAGENET_MEAN': 'transforms',
    'IMAGENET_STD': 'transforms',
    'load_split': 'datasets',
    'LoaderOptions': 'pipeline',
    'normalize': 'transforms',
    'prepare_command': 'datasets',
    'random_affine': 'glyph_transforms',
    'random_resized_crop': 'transforms',
    'random_resized_crop_box': 'transforms',
    'random_stroke': 'glyph_transforms',
    'random_translate': 'transforms',
    'read_class_list': 'datasets',
    'record_image': 'datasets',
    'resize': 'transforms',
    'resize_shorter': 'transforms',
    'SmallEvalTransform': 'transforms',
    'SmallTrainTransform': 'transforms',
    'Split': 'datasets',
    'SyntheticRecords': 'datasets',
    'TrainBatches': 'pipeline',
    'TrainTransform': 'transforms',
    'translate': 'transforms',
}

__all__ = sorted(_EXPORTS)
# The package's modules, imported when first used as attributes.
_MODULES = ('datasets', 'glyph_transforms', 'glyphs', 'inputs', 'pipeline',
            'sampler', 'transforms')


def __getattr__(name: str):
  """The names above from their modules, and the modules themselves
  (`tcm_jax.data.glyphs`, the benchmark's command line, too: importing it
  with the package would make `python -m tcm_jax.data.glyphs` run a module
  already imported, which runpy warns about), each imported when first used.
  """
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'),
                    name)
    globals()[name] = value
    return value
  if name in _MODULES:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted({*__all__, *_MODULES})
