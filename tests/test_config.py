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
