"""tcm_jax.config: light config files, the model section, loading by path."""

import json
import pathlib
import subprocess
import sys

import pytest

from tcm_jax import config as config_lib
from tcm_jax import models

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / 'configs').glob('*.py'))
HEAVY = ('jax', 'flax', 'optax', 'orbax', 'tensorflow_datasets', 'grain')

# Imports every config file given and calls its get_config (once per argument
# it takes), then prints the heavy packages that are loaded.
_PROBE = '''
import json, sys
import tcm_jax
from tcm_jax import config as config_lib
for path in sys.argv[1:]:
  module = config_lib.load_module(path)
  for argument in getattr(module, 'ARGUMENTS', [None]):
    config = (module.get_config() if argument is None
              else module.get_config(argument))
    assert config.model.name, path
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))
''' % (HEAVY,)


def _heavy_after(*paths):
  run = subprocess.run([sys.executable, '-c', _PROBE, *map(str, paths)],
                       cwd=REPO, capture_output=True, text=True, check=True)
  return set(json.loads(run.stdout.strip().splitlines()[-1]))


def test_config_files_import_nothing_heavy():
  assert CONFIG_FILES
  assert _heavy_after() == set()  # `import tcm_jax` alone: nothing either
  assert _heavy_after(*CONFIG_FILES) == set()


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_derive_from_tcm_jax_config_only(path):
  imports = [line for line in path.read_text().splitlines()
             if line.startswith(('import ', 'from '))]
  assert 'from tcm_jax import config as config_lib' in imports
  assert all(line.startswith(('from tcm_jax import config ', 'import os'))
             for line in imports), imports


@pytest.mark.parametrize('name', models.MODELS)
def test_model_config_is_the_encoders_config(name):
  assert (config_lib.model_config(name).to_dict()
          == models.encoder_config(name).to_dict())
  overrides = {'embedding_size': 16, 'dtype': 'bfloat16'}
  assert (config_lib.model_config(name, **overrides).to_dict()
          == models.encoder_config(name, **overrides).to_dict())


def test_the_option_table_names_every_encoder():
  # tcm_jax._encoder_options lists the names without importing Flax.
  from tcm_jax import _encoder_options  # pylint: disable=g-import-not-at-top
  assert (sorted(_encoder_options.RESNETS + _encoder_options.VITS)
          == sorted(models.MODELS))


def test_model_config_refuses_what_the_encoders_refuse():
  for call in (config_lib.model_config, models.encoder_config):
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['patch_size'"
                       r"\] for 'resnet18'; its options are \["):
      call('resnet18', patch_size=4)
    with pytest.raises(ValueError, match="Unknown model 'resnet99'"):
      call('resnet99')


def test_load_module_runs_a_file_by_path(tmp_path):
  path = tmp_path / 'answer.py'
  path.write_text('import dataclasses\n\n@dataclasses.dataclass\n'
                  'class A:\n  x: int = 42\n')
  assert config_lib.load_module(str(path)).A().x == 42
  module = config_lib.load_module(str(path), '_answer', register=True)
  assert sys.modules.pop('_answer') is module
  assert '_loaded_answer' not in sys.modules


def test_resume_changes_tell_resumable_keys_from_another_run():
  saved = json.loads(json.dumps(config_lib.default_config().to_dict()))
  del saved['eval']['final_split']  # saved before the key existed
  current = json.loads(json.dumps(saved))
  current['eval']['final_split'] = 'test'
  assert config_lib.resume_changes(saved, current) == ([], [])
  current['train']['num_steps'], current['loss']['name'] = 7, 'triplet'
  assert config_lib.resume_changes(saved, current) == (
      ['loss.name', 'train.num_steps'], ['loss.name'])


def _saved(config):
  """A config as a checkpoint's config.json holds it."""
  return json.loads(json.dumps(config.to_dict()))


@pytest.mark.parametrize('name, option', [('resnet18', 'gem_p'),
                                          ('vit_ti', 'patch_size')])
def test_a_run_saved_before_an_encoder_option_existed_resumes(name, option):
  config = config_lib.default_config()
  config.model = config_lib.model_config(name, embedding_size=16)
  current = _saved(config)
  saved = _saved(config)
  del saved['model'][option]  # saved before the encoder had the option
  assert config_lib.resume_changes(saved, current) == ([], [])
  merged = config_lib.with_default_keys(saved)
  assert merged['model'] == current['model']
  assert merged['model']['embedding_size'] == 16  # the saved value stays


def test_a_changed_encoder_option_is_still_another_run():
  config = config_lib.default_config()
  config.model = config_lib.model_config('resnet18')
  saved = _saved(config)
  del saved['model']['gem_p']  # it ran at the default, 3.0
  config.model.gem_p = 4.0
  assert config_lib.resume_changes(saved, _saved(config)) == (
      ['model.gem_p'], ['model.gem_p'])
  config.model.gem_p, config.model.width = 3.0, 0.5
  assert config_lib.resume_changes(saved, _saved(config)) == (
      ['model.width'], ['model.width'])
  assert config_lib.describe_changes(saved, _saved(config),
                                     ['model.width']) == 'model.width 1.0 vs 0.5'
  config.model = config_lib.model_config('resnet34')
  assert config_lib.resume_changes(saved, _saved(config))[1] == ['model.name']


def test_no_option_is_invented_for_a_model_that_is_no_encoder():
  saved = _saved(config_lib.default_config())
  saved['model'] = {'name': 'my_encoder', 'depth': 3}
  assert config_lib.with_default_keys(saved)['model'] == {
      'name': 'my_encoder', 'depth': 3}
  del saved['model']  # (and no section for a config without one)
  assert 'model' not in config_lib.with_default_keys(saved)


def test_a_model_section_that_leaves_options_to_their_defaults_resumes():
  # model_config fills every option; a section of a few keys is valid too
  # (the encoder takes the rest at their defaults), saved or current.
  config = config_lib.default_config()
  config.model = config_lib.model_config('vit_ti', image_size=32)
  full = _saved(config)
  short = {**full, 'model': {'name': 'vit_ti', 'image_size': 32}}
  assert config_lib.resume_changes(full, short) == ([], [])
  assert config_lib.resume_changes(short, full) == ([], [])
  short['model']['patch_size'] = 8
  assert config_lib.resume_changes(full, short)[1] == ['model.patch_size']
  assert config_lib.describe_changes(
      full, short, ['model.patch_size']) == 'model.patch_size 16 vs 8'


# --- Every value is checked before anything is built ---------------------------


def _digits():
  config = config_lib.load_config(str(REPO / 'configs' / 'digits.py'))
  config.model = config_lib.model_config('resnet18', width=0.25,
                                         small_images=True, embedding_size=16)
  return config


def _set(config, dotted, value):
  *sections, key = dotted.split('.')
  for section in sections:
    config = config[section]
  config[key] = value


# key, value, the message (its start after the key, and the value).
BAD_VALUES = [
    ('input.samples_per_class', 1,
     'must be an int >= 2 (positive pairs: two images of a class per batch)'),
    ('input.classes_per_batch', 1,
     'must be an int >= 2 (negative pairs: two classes per batch)'),
    ('input.resize_size', 8, 'must be >= input.image_size with the imagenet'),
    ('loss.tcm.margin_pos', 1.5, 'must be in [-1, 1]'),
    ('loss.tcm.margin_neg', -1.5, 'must be in [-1, 1]'),
    ('loss.tcm.lambda_neg', -1.0, 'must be >= 0'),
    ('loss.tcm.enabled', None, 'must be a bool'),
    ('eval.epsilon', 1.0, 'must be in (0, 1)'),
    ('eval.target_far', 0.0, 'must be a false-accept rate in (0, 1]'),
    ('eval.far_range', (0.1, 0.01), 'must be a pair (low, high)'),
    ('eval.far_range', (0.0, 0.1),
     'must be a pair (low, high) of false-accept rates, 0 < low < high'),
    ('eval.num_thresholds', 1, 'must be an int from 2 to 2097153'),
    # More than any range holds (metrics.advanced.thresholds_between's
    # float32 limit over [0, 2], checked below): refused before training.
    ('eval.num_thresholds', 10**7, 'must be an int from 2 to 2097153'),
    ('eval.ks', (0, 1), 'must be a non-empty tuple of ints >= 1'),
    ('eval.beta', 0.0, 'must be > 0'),
    ('eval.baselines', None, 'must be a bool'),
    ('optimizer.momentum', 1.0, 'must be in [0, 1)'),
    ('optimizer.milestones', (10, -1), 'must be a tuple of epochs >= 0'),
    ('pretrained', None, 'must be a path'),
    ('dataset.name', 'digitz', "must be one of ['cars196'"),
    ('dataset.train_side', 'pretrain',
     "must be one of ['train'] for digits_closed (never the classes"),
    ('dataset.synthetic.num_classes', 1, 'must be an int >= 2'),
    ('dataset.glyphs.ink_fraction', 0.0, 'must be in (0, 1]'),
    ('dataset.glyphs.val_fraction', 0.6,
     'must be in [0, 1 - dataset.glyphs.test_fraction]'),
    ('train.num_steps', -5, 'must be an int >= 0'),
    ('input.eval_batch_size', 0, 'must be an int >= 1'),
]


def test_the_threshold_limit_is_the_metrics_own():
  from tcm_jax.metrics import advanced  # pylint: disable=import-outside-toplevel
  config = _digits()
  config.eval.num_thresholds = 2_097_153  # the most the config allows
  config_lib.check_config(config)
  assert len(advanced.thresholds_between(0.0, 2.0, 2_097_153)) == 2_097_153
  with pytest.raises(ValueError, match='use num_thresholds <= 2097153'):
    advanced.thresholds_between(0.0, 2.0, 2_097_154)


def test_the_grid_limit_of_the_one_pass_engine_is_the_metrics_own():
  from tcm_jax.metrics import advanced  # pylint: disable=import-outside-toplevel
  config = _digits()
  config.eval.engine = 'histogram'
  config.eval.num_thresholds = 33_025  # the most the config allows then
  config_lib.check_config(config)
  advanced.check_options(engine='histogram', num_thresholds=33_025)
  with pytest.raises(ValueError, match=r"num_thresholds=33026 is more than "
                     r"the 33025 edges of engine='histogram''s grid"):
    advanced.check_options(engine='histogram', num_thresholds=33_026)
  config.eval.num_thresholds = 33_026
  with pytest.raises(ValueError, match=r'eval.num_thresholds must be at most '
                     r"33025 with eval.engine='histogram'"):
    config_lib.check_config(config)
  config.eval.engine = 'exact'
  config_lib.check_config(config)


@pytest.mark.parametrize('key, value, message', BAD_VALUES,
                         ids=[f'{k}={v!r}' for k, v, _ in BAD_VALUES])
def test_check_config_refuses_every_bad_value(key, value, message):
  config = _digits()
  if key == 'input.resize_size':
    config.input.recipe, config.input.image_size = 'imagenet', 16
  config_lib.check_config(config)  # the config itself is good
  with config.unlocked():
    _set(config, key, value)
  with pytest.raises(ValueError) as error:
    config_lib.check_config(config)
  assert str(error.value).startswith(f'{key} {message}'), str(error.value)
  assert str(error.value).endswith(f'got {value!r}.'), str(error.value)


def test_one_sample_per_class_is_for_a_proxy_loss_without_tcm_only():
  config = _digits()
  config.input.samples_per_class = 1
  config.loss.name = 'arcface'
  with pytest.raises(ValueError, match='input.samples_per_class must be an '
                     r'int >= 2 .*only a proxy loss without TCM'):
    config_lib.check_config(config)  # TCM needs positive pairs
  config.loss.tcm.enabled = False
  config_lib.check_config(config)  # ArcFace alone compares with proxies
  config.loss.name = 'multi_similarity'
  with pytest.raises(ValueError, match='input.samples_per_class must be'):
    config_lib.check_config(config)  # a pair loss needs them


@pytest.mark.parametrize('loss, hyper', [('arcface', {'scale': -1.0}),
                                         ('triplet', {'margin': -1.0})])
def test_the_losses_hyperparameter_values_are_checked_without_compiling(
    loss, hyper, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  # (Imported first: the modules' own jax.jit decorators run on import.)
  from tcm_jax.losses import registry  # pylint: disable=g-import-not-at-top,unused-import

  def refuse(*args, **kwargs):
    raise AssertionError('compiled while checking the config')

  monkeypatch.setattr(jax, 'jit', refuse)
  config = _digits()
  config.loss.name = loss
  config.loss.hyper = hyper
  with pytest.raises(ValueError) as error:
    config_lib.check_config(config)
  # Then the loss's own words, which name the hyperparameter and the value.
  (name, value), = hyper.items()
  prefix = f'loss.hyper of loss.name {loss!r} ({hyper}): '
  assert str(error.value).startswith(prefix), error.value
  assert name in str(error.value)[len(prefix):], error.value
  assert repr(value) in str(error.value)[len(prefix):], error.value


def test_load_config_without_check_leaves_the_values_to_the_caller(tmp_path):
  path = tmp_path / 'one_sample.py'
  path.write_text('from tcm_jax import config as config_lib\n\n\n'
                  'def get_config():\n'
                  '  config = config_lib.default_config()\n'
                  '  config.input.samples_per_class = 1\n'
                  '  return config\n')
  config = config_lib.load_config(str(path), check=False)
  assert config.input.samples_per_class == 1
  with pytest.raises(ValueError, match='input.samples_per_class'):
    config_lib.load_config(str(path))


@pytest.mark.parametrize('key, message', [
    ('loss.tcm.enabeld',
     'no config key loss.tcm.enabeld (did you mean loss.tcm.enabled?); '
     'loss.tcm has: enabled, lambda_neg, lambda_pos, margin_neg, margin_pos.'),
    ('trian.num_steps', 'no config key trian.num_steps (did you mean '
     'train.num_steps?); the config has: dataset, eval, input, loss, model, '
     'optimizer, pretrained, pretrained_head, seed, train.'),
    ('seed.value', 'no config key seed.value: seed is a value (0), not a '
     'section.'),
    ('loss.hyper.temperature', 'no config key loss.hyper.temperature; '
     "loss.hyper has: no keys (an override cannot add a key: set the base "
     "loss's hyperparameters in the config file, "
     'config.loss.hyper.temperature = ...).'),
])
def test_check_override_names_the_key_and_lists_its_sections_keys(key,
                                                                  message):
  config = config_lib.default_config()
  with pytest.raises(ValueError) as error:
    config_lib.check_override(config, key)
  assert str(error.value) == message
  config_lib.check_override(config, 'loss.tcm.enabled')
  config_lib.check_override(config, 'loss.tcm')


def test_eval_kwargs_of_a_config_saved_before_the_engine_key():
  # scripts/reproduce.py reads the configs of runs saved without it.
  import ml_collections  # pylint: disable=import-outside-toplevel
  from tcm_jax import evaluator  # pylint: disable=import-outside-toplevel
  saved = config_lib.default_config().to_dict()
  del saved['eval']['engine']
  kwargs = evaluator.eval_kwargs(ml_collections.ConfigDict(saved))
  assert kwargs['engine'] == 'exact'
