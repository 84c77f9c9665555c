"""Package-wide properties: light imports and doctested public functions."""

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import tcm_jax
import tcm_jax.data
import tcm_jax.losses
import tcm_jax.losses.advanced
import tcm_jax.metrics
import tcm_jax.metrics.advanced
import tcm_jax.models
import tcm_jax.models.pretrained
import tcm_jax.similarity
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

# What `import tcm_jax` must not pull in: the `train`, `data` and `plots`
# extras.
HEAVY = ('flax', 'optax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'grain',
         'ml_collections', 'sklearn', 'matplotlib', 'absl', 'tensorboardX',
         'safetensors', 'PIL', 'tqdm', 'chex')
# The tcm_jax modules the light core is made of.
LIGHT = ('tcm_jax', 'tcm_jax._checks', 'tcm_jax._discrete_checks',
         'tcm_jax._array_checks',
         'tcm_jax._moved', 'tcm_jax.similarity', 'tcm_jax.losses',
         'tcm_jax.metrics')


def _modules():
  return sorted(m.name for m in pkgutil.walk_packages(
      tcm_jax.__path__, prefix='tcm_jax.'))


def _run(code: str) -> str:
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                        check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize('package', [
    'tcm_jax', 'tcm_jax.losses', 'tcm_jax.metrics', 'tcm_jax.similarity',
    'tcm_jax.losses.advanced', 'tcm_jax.metrics.advanced'])
def test_import_pulls_in_only_jax_and_numpy(package):
  out = _run(f"""
      import sys, {package}
      print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))
      light = {LIGHT!r}
      print(sorted(m for m in sys.modules if m.startswith('tcm_jax')
                   and m not in light
                   and not m.startswith(('tcm_jax.losses.',
                                         'tcm_jax.metrics.'))))
      """)
  assert out.split('\n')[:2] == ['[]', '[]']


def test_the_core_works_with_only_jax_and_numpy_installed():
  # The extras' packages cannot be imported at all, as in a fresh
  # `pip install tcm_jax`; the top-level names and the subpackages work.
  out = _run(f"""
      import importlib.abc, sys

      class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in {HEAVY!r}:
            raise ImportError(f'{{name}} is not installed')

      sys.meta_path.insert(0, Blocked())
      import numpy as np
      import tcm_jax
      s = np.array([[1.0, 0.9, 0.4, 0.3], [0.9, 1.0, 0.2, 0.1],
                    [0.4, 0.2, 1.0, 0.3], [0.3, 0.1, 0.3, 1.0]])
      y = np.array([0, 0, 1, 1])
      print(round(tcm_jax.opis(s, y, distance_range=(0.5, 0.7)), 4))
      print(round(float(tcm_jax.tcm_loss(s, y)), 4))
      print(tcm_jax.metrics.map_at_r(s, y))
      for name in ('eps_opis', 'evaluate_embeddings', 'cosine_similarity',
                   'TCMMargins', 'margins_from_similarity',
                   'tcm_loss_from_embeddings'):
        getattr(tcm_jax, name)
      tcm_jax.losses.sharded_tcm_loss
      tcm_jax.losses.advanced.tcm_statistics
      tcm_jax.metrics.advanced.evaluate_source
      tcm_jax.similarity.l2_normalize
      try:
        tcm_jax.models
      except ImportError as e:
        print('models:', e)
      """)
  assert out.split('\n')[:4] == ['0.2147', '0.3', '0.5',
                                  'models: flax is not installed']


def test_subpackages_and_trainer_modules_load_when_first_used():
  out = _run("""
      import sys, tcm_jax
      print('tcm_jax.models' in sys.modules, 'tcm_jax.train' in sys.modules)
      print(tcm_jax.models.__name__, tcm_jax.data.__name__,
            tcm_jax.train.__name__, tcm_jax.evaluate.__name__)
      print(set(dir(tcm_jax)) >= {'models', 'data', 'train', 'opis'})
      """)
  assert out.split('\n')[:3] == [
      'False False', 'tcm_jax.models tcm_jax.data tcm_jax.train '
      'tcm_jax.evaluate', 'True']
  with pytest.raises(AttributeError, match='no attribute'):
    tcm_jax.no_such_module  # pylint: disable=pointless-statement


@pytest.mark.parametrize('module, absent', [
    # Each module of the data package pulls in only what it uses.
    ('tcm_jax.data', ('grain', 'PIL', 'jax', 'tcm_jax.data.datasets')),
    ('tcm_jax.data.datasets', ('grain', 'PIL', 'flax', 'matplotlib')),
    ('tcm_jax.data.sampler', ('grain', 'PIL', 'tensorflow_datasets')),
    ('tcm_jax.report', ('ml_collections', 'flax', 'grain')),
    ('tcm_jax.margins', ('ml_collections', 'grain', 'flax')),
])
def test_a_module_imports_only_what_it_uses(module, absent):
  out = _run(f"""
      import sys, {module}
      print(sorted(m for m in {absent!r} if m in sys.modules))
      """)
  assert out.split('\n')[0] == '[]'


def test_the_data_package_serves_its_names_from_their_modules():
  out = _run("""
      import sys
      from tcm_jax import data
      print(data.Split.__module__, 'grain' in sys.modules)
      print(data.eval_batches.__module__, 'grain' in sys.modules)
      print(sorted(data.__all__) == data.__all__, 'glyphs' in dir(data))
      """)
  assert out.split('\n')[:3] == ['tcm_jax.data.datasets False',
                                  'tcm_jax.data.pipeline True', 'True True']
  with pytest.raises(AttributeError, match='no attribute'):
    tcm_jax.data.no_such_name  # pylint: disable=pointless-statement


def test_losses_and_metrics_do_not_import_models_data_or_train():
  forbidden = ('tcm_jax.models', 'tcm_jax.data', 'tcm_jax.train',
               'tcm_jax.config', 'tcm_jax.evaluate', 'tcm_jax.checkpoint',
               'tcm_jax.parallel', 'tcm_jax.plots', 'tcm_jax.baselines',
               'import flax', 'from flax', 'import optax', 'import orbax',
               'import ml_collections', 'import absl', 'from absl')
  for name in _modules():
    if name.startswith(('tcm_jax.losses', 'tcm_jax.metrics',
                        'tcm_jax.similarity')) or name in (
                            'tcm_jax._checks', 'tcm_jax._discrete_checks',
                            'tcm_jax._array_checks'):
      source = inspect.getsource(importlib.import_module(name))
      for text in forbidden:
        assert text not in source, (name, text)


def test_public_names():
  assert sorted(tcm_jax.__all__) == [
      'TCMMargins', 'cosine_similarity', 'eps_opis', 'evaluate_embeddings',
      'losses', 'margins_from_similarity', 'metrics', 'opis', 'similarity',
      'tcm_loss', 'tcm_loss_from_embeddings']
  assert tcm_jax.opis is tcm_jax.metrics.opis
  assert tcm_jax.cosine_similarity is tcm_jax.similarity.cosine_similarity
  for package in (tcm_jax, tcm_jax.losses, tcm_jax.losses.advanced,
                  tcm_jax.metrics, tcm_jax.metrics.advanced, tcm_jax.data):
    assert sorted(package.__all__) == sorted(set(package.__all__))
    for name in package.__all__:
      assert hasattr(package, name), (package.__name__, name)
  # No public function shares its name with a module of its package, except
  # an old module path kept for one release (`metrics/opis.py`).
  for package in (tcm_jax.losses, tcm_jax.metrics, tcm_jax.data):
    submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    for name in package.__all__:
      if name in submodules and not inspect.ismodule(getattr(package, name)):
        old_path = importlib.import_module(f'{package.__name__}.{name}')
        assert hasattr(old_path.__getattr__, 'new_homes'), (package, name)
  sharded = [n for n in tcm_jax.losses.__all__ if n.startswith('sharded_')]
  for name in sharded:
    assert name.removeprefix('sharded_') in tcm_jax.losses.__all__


@pytest.mark.parametrize('package', [tcm_jax, tcm_jax.similarity,
                                     tcm_jax.losses, tcm_jax.losses.advanced,
                                     tcm_jax.metrics, tcm_jax.metrics.advanced,
                                     tcm_jax.models, tcm_jax.models.pretrained,
                                     tcm_jax.data,
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


def test_a_missing_extra_is_named():
  out = _run("""
      import importlib.abc, sys

      class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in ('flax', 'PIL'):
            raise ModuleNotFoundError(f'No module named {name!r}',
                                      name=name)

      sys.meta_path.insert(0, Missing())
      import tcm_jax
      for module in ('models', 'baselines'):
        try:
          getattr(tcm_jax, module)
        except ModuleNotFoundError as e:
          print(e)
      """)
  assert out.split('\n')[:2] == [
      "tcm_jax.models needs 'flax', which the core install does not have: "
      'pip install "tcm_jax[train]" (or "tcm_jax[all]").',
      "tcm_jax.baselines needs 'PIL', which the core install does not "
      'have: pip install "tcm_jax[data]" (or "tcm_jax[all]").']
