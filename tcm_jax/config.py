"""The trainer's config: defaults, the paper's recipes, loading and checking.

The files in `configs/` start from `default_config()` (every key, with its
meaning) or `recipe_config` and import nothing else: building a config needs
only ml_collections, so a config file loads anywhere. `check_config` also asks
the loss registry and the encoders (imported when it runs). A resumed run may
differ from its saved config in the `RESUMABLE` keys only (`resume_changes`).

This module loads config files; it publishes the defaults and recipes
(`tcm_jax._config_defaults`), the checks (`tcm_jax._config_checks`) and the
comparison of saved configs (`tcm_jax._config_resume`) from their modules.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import types

import ml_collections

from tcm_jax import _moved
from tcm_jax._config_checks import check_choice
from tcm_jax._config_checks import check_config
from tcm_jax._config_checks import check_override
from tcm_jax._config_checks import metric_names
from tcm_jax._config_checks import objective_arguments
from tcm_jax._config_defaults import BACKBONES
from tcm_jax._config_defaults import default_config
from tcm_jax._config_defaults import FINAL_SPLITS
from tcm_jax._config_defaults import FREE_SECTIONS
from tcm_jax._config_defaults import model_config
from tcm_jax._config_defaults import OPTIMIZERS
from tcm_jax._config_defaults import recipe_config
from tcm_jax._config_defaults import RECIPES
from tcm_jax._config_defaults import RESUMABLE
from tcm_jax._config_resume import changed_keys
from tcm_jax._config_resume import describe_changes
from tcm_jax._config_resume import resume_changes
from tcm_jax._config_resume import with_default_keys

# The functions, in the order the API reference lists them.
__all__ = [
    'model_config',
    'default_config',
    'recipe_config',
    'load_module',
    'load_config',
    'check_override',
    'check_choice',
    'metric_names',
    'objective_arguments',
    'check_config',
    'with_default_keys',
    'changed_keys',
    'resume_changes',
    'describe_changes',
]


def load_module(path: str, name: str | None = None, *,
                register: bool = False) -> types.ModuleType:
  """Runs the Python file `path` as a module named `name` and returns it.

  For files off the import path: config files, scripts, `colabs/build.py`.
  `register` adds the module to `sys.modules` before it runs (dataclasses
  look their module up there).

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax import config as config_lib
    >>> path = os.path.join(tempfile.mkdtemp(), 'answer.py')
    >>> with open(path, 'w') as f:
    ...   _ = f.write('ANSWER = 42\\n')
    >>> config_lib.load_module(path).ANSWER
    42
  """
  if name is None:
    name = '_loaded_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ValueError(f'{path} cannot be loaded as a Python module.')
  module = importlib.util.module_from_spec(spec)
  if register:
    sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config(spec: str, *, check: bool = True
                ) -> ml_collections.ConfigDict:
  """The config of `path/to/file.py[:argument]`, as `--config` reads it.

  For notebooks and scripts: the file's `get_config()`, or
  `get_config(argument)` when the spec has a `:` after `.py` (as with
  `--config`, `file.py:` passes the empty string), is called and its config
  checked (`check_config`; not with `check=False`, as `--config` does
  before its overrides) and returned unlocked, to be changed before
  training. A file that takes other arguments than the backbones lists them
  in `ARGUMENTS`.

  Raises FileNotFoundError (no such file) or ValueError (not a `.py` file,
  no `get_config`, a wrong or missing argument, not a ConfigDict, an
  invalid config).

  Examples:
    >>> import os
    >>> from tcm_jax import config as config_lib
    >>> configs = os.path.join(os.path.dirname(config_lib.__file__), '..',
    ...                        'configs')
    >>> config = config_lib.load_config(os.path.join(configs,
    ...                                              'cub200.py:vit_b16'))
    >>> config.model.name, config.dataset.name
    ('vit_b', 'cub200')
  """
  match = re.fullmatch(r'(.+?\.py)(?::(.*))?', spec, re.S)
  if match is None:
    raise ValueError(f'a config spec is path/to/file.py[:argument], got '
                     f'{spec!r}.')
  path, argument = match.groups()
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config file {path!r} not found (from {spec!r}; relative paths start '
        f'in {os.getcwd()}).')
  name = os.path.splitext(os.path.basename(path))[0]
  module = load_module(path, f'_config_{name}')
  get_config = getattr(module, 'get_config', None)
  if get_config is None:
    raise ValueError(f'{path} defines no get_config().')
  takes = [p for p in inspect.signature(get_config).parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  needs = [p for p in takes if p.default is p.empty]
  allowed = getattr(module, 'ARGUMENTS', None)
  if argument is None and needs:
    raise ValueError(
        f'{path} needs an argument ({spec}:ARG, ARG one of '
        f'{list(allowed or BACKBONES)}).')
  if argument is not None and not takes:
    raise ValueError(f'{path} takes no argument, got {argument!r} from '
                     f'{spec!r}.')
  if argument is not None and allowed is not None and argument not in allowed:
    raise ValueError(f'{path} takes one of {list(allowed)}, got {argument!r}.')
  config = get_config() if argument is None else get_config(argument)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'{path}: get_config() must return an '
                     f'ml_collections.ConfigDict, got {type(config).__name__}.')
  if check:
    check_config(config)
  return config


_moved.publish(globals())  # documented, and named in tracebacks, as here
