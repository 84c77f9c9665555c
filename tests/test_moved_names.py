"""Old names and module paths: they work for one release, with a warning."""

import importlib
import subprocess
import sys
import textwrap
import warnings

import pytest

import tcm_jax
from tcm_jax import losses
from tcm_jax import metrics

# Each module that serves moved names from a `tcm_jax._moved.moved`
# `__getattr__`.
MODULES = ('tcm_jax.losses', 'tcm_jax.losses.tcm', 'tcm_jax.metrics.opis',
           'tcm_jax.metrics.pair_counts', 'tcm_jax.metrics.evaluation',
           'tcm_jax.metrics.threshold', 'tcm_jax.metrics.retrieval',
           'tcm_jax.metrics.bootstrap', 'tcm_jax.train', 'tcm_jax.evaluate')


def _moved_names():
  for module_name in MODULES:
    served = importlib.import_module(module_name).__getattr__
    for name, new in sorted(served.new_homes.items()):
      yield module_name, name, new


def _resolve(path):
  module, _, name = path.rpartition('.')
  return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize('module_name, name, new', list(_moved_names()))
def test_a_moved_name_is_its_new_home_and_warns_with_it(module_name, name,
                                                        new):
  module = importlib.import_module(module_name)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    obj = getattr(module, name)
  assert obj is _resolve(new)
  messages = [str(w.message) for w in caught
              if issubclass(w.category, DeprecationWarning)]
  assert messages == [
      f'{module_name}.{name} has moved to {new}; {module_name} will stop '
      'providing it in the next release.']
  assert caught[0].filename == __file__  # the line that used the name


@pytest.mark.parametrize('old, new', [
    ('tcm_jax.losses.References', 'tcm_jax.losses.advanced.References'),
    ('tcm_jax.losses.l2_normalize', 'tcm_jax.similarity.l2_normalize'),
    ('tcm_jax.losses.tcm_loss_from_statistics',
     'tcm_jax.losses.advanced.tcm_loss_from_statistics'),
])
def test_old_package_attributes(old, new):
  module, _, name = old.rpartition('.')
  with pytest.warns(DeprecationWarning, match=f'has moved to {new};'):
    assert getattr(importlib.import_module(module), name) is _resolve(new)


def test_from_import_of_an_old_module_path():
  with pytest.warns(DeprecationWarning,
                    match='tcm_jax.metrics.opis.utility_curves has moved to '
                    'tcm_jax.metrics.utility_curves;'):
    from tcm_jax.metrics.opis import utility_curves  # pylint: disable=all
  assert utility_curves is metrics.utility_curves
  with pytest.warns(DeprecationWarning,
                    match='has moved to tcm_jax.metrics.Evaluation;'):
    from tcm_jax.metrics.evaluation import Evaluation  # pylint: disable=all
  assert Evaluation is metrics.Evaluation
  with pytest.warns(DeprecationWarning, match='tcm_jax.losses.advanced'):
    from tcm_jax.losses.tcm import TCMStatistics  # pylint: disable=all
  assert TCMStatistics is losses.advanced.TCMStatistics


def test_a_renamed_function():
  from tcm_jax.metrics import evaluation  # pylint: disable=g-import-not-at-top
  assert (evaluation.__getattr__.new_homes['evaluate']
          == 'tcm_jax.metrics.advanced.evaluate_source')
  with pytest.warns(DeprecationWarning, match='advanced.evaluate_source;'):
    assert evaluation.evaluate is metrics.advanced.evaluate_source


def _internal_names():
  for module_name in MODULES:
    served = importlib.import_module(module_name).__getattr__
    for name, home in sorted(served.internal.items()):
      yield module_name, name, home


@pytest.mark.parametrize('module_name, name, home', list(_internal_names()))
def test_an_internal_name_warns_without_naming_a_private_module(
    module_name, name, home):
  module = importlib.import_module(module_name)
  with pytest.warns(DeprecationWarning) as caught:
    obj = getattr(module, name)
  assert obj is _resolve(home)
  message = str(caught[0].message)
  assert message == (f'{module_name}.{name} is internal now, with no public '
                     f'replacement; {module_name} will stop providing it in '
                     'the next release.')
  assert '._' not in message


def test_no_warning_points_at_a_private_module():
  for module_name, name, new in _moved_names():
    assert '._' not in new, (module_name, name, new)


@pytest.mark.parametrize('old, new', [
    ('tcm_jax.metrics.evaluation.UtilityCurves',
     'tcm_jax.metrics.UtilityCurves'),
    ('tcm_jax.metrics.evaluation.opis_from_utility',
     'tcm_jax.metrics.opis_from_utility'),
    ('tcm_jax.metrics.evaluation.eps_opis_from_utility',
     'tcm_jax.metrics.eps_opis_from_utility'),
    ('tcm_jax.metrics.evaluation.curves_from_counts',
     'tcm_jax.metrics.advanced.curves_from_counts'),
    ('tcm_jax.metrics.pair_counts.cosine_similarity',
     'tcm_jax.similarity.cosine_similarity'),
    ('tcm_jax.evaluate.curves_from_counts',
     'tcm_jax.metrics.advanced.curves_from_counts'),
])
def test_names_the_old_modules_imported(old, new):
  # The old modules imported these from their neighbours, so
  # `from tcm_jax.metrics.evaluation import UtilityCurves` worked.
  module, _, name = old.rpartition('.')
  with pytest.warns(DeprecationWarning, match=f'has moved to {new};'):
    assert getattr(importlib.import_module(module), name) is _resolve(new)


def test_old_submodule_paths_are_attributes_without_an_import():
  out = subprocess.run([sys.executable, '-W', 'error', '-c', textwrap.dedent(
      """
      import tcm_jax
      print(tcm_jax.losses.tcm.__name__, tcm_jax.metrics.threshold.__name__)
      """)], check=True, capture_output=True, text=True).stdout
  assert out.split() == ['tcm_jax.losses.tcm', 'tcm_jax.metrics.threshold']


def test_unknown_names_raise_attribute_error():
  for module_name in MODULES:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
      getattr(importlib.import_module(module_name), 'nope')


def test_old_module_paths_leave_the_function_opis_in_place():
  # Whatever is imported first, `tcm_jax.metrics.opis` is the function.
  out = subprocess.run([sys.executable, '-W', 'ignore', '-c', textwrap.dedent(
      """
      from tcm_jax.metrics.opis import utility_curves
      import tcm_jax.metrics.pair_counts
      from tcm_jax import metrics
      import tcm_jax
      print(callable(metrics.opis), metrics.opis is tcm_jax.opis,
            metrics.pair_counts.__name__)
      """)], check=True, capture_output=True, text=True).stdout
  assert out.split() == ['True', 'True', 'tcm_jax.metrics.pair_counts']
  assert callable(metrics.opis)


def test_public_names_do_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    for package in (tcm_jax, losses, losses.advanced, metrics,
                    metrics.advanced):
      for name in package.__all__:
        getattr(package, name)
