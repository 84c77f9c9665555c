"""Package-wide properties: light imports and doctested public functions."""

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import tcm_jax
import tcm_jax.losses
import tcm_jax.metrics
import tcm_jax.models
import tcm_jax.models.pretrained
from tcm_jax import baselines
from tcm_jax import checkpoint
from tcm_jax import parallel
from tcm_jax import plots
from tcm_jax import train
from tcm_jax.data import datasets as data_datasets
from tcm_jax.data import glyph_transforms as data_glyph_transforms
from tcm_jax.data import glyphs as data_glyphs
from tcm_jax.data import pipeline as data_pipeline
from tcm_jax.data import sampler as data_sampler
from tcm_jax.data import transforms as data_transforms

HEAVY = ('flax', 'optax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'grain',
         'ml_collections', 'sklearn', 'matplotlib', 'absl')


def _modules():
  return sorted(m.name for m in pkgutil.walk_packages(
      tcm_jax.__path__, prefix='tcm_jax.'))


@pytest.mark.parametrize('package',
                         ['tcm_jax', 'tcm_jax.losses', 'tcm_jax.metrics'])
def test_import_pulls_in_only_jax_and_numpy(package):
  code = (f'import sys, {package}; '
          f'print(sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r}))')
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'


def test_losses_and_metrics_do_not_import_models_data_or_train():
  for name in _modules():
    if name.startswith(('tcm_jax.losses', 'tcm_jax.metrics')):
      source = inspect.getsource(importlib.import_module(name))
      for forbidden in ('tcm_jax.models', 'tcm_jax.data', 'tcm_jax.train'):
        assert forbidden not in source, (name, forbidden)


@pytest.mark.parametrize('package', [tcm_jax.losses, tcm_jax.metrics,
                                     tcm_jax.models, tcm_jax.models.pretrained,
                                     data_datasets, data_pipeline, data_sampler,
                                     data_transforms, data_glyphs,
                                     data_glyph_transforms, baselines,
                                     checkpoint, parallel, plots, train])
def test_every_public_function_has_an_example(package):
  names = getattr(package, '__all__', None) or [
      n for n in vars(package) if not n.startswith('_')
      and getattr(getattr(package, n), '__module__', None) == package.__name__]
  for name in names:
    obj = getattr(package, name)
    if inspect.isfunction(obj):
      assert '>>>' in (obj.__doc__ or ''), f'{name} has no doctest example'


@pytest.mark.parametrize('module_name', _modules())
def test_doctests(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(
      module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
