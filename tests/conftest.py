"""Test-suite setup: eight virtual CPU devices, before any JAX backend starts,
and one persistent compilation cache for the whole run."""

import atexit
import os
import shutil
import tempfile

import jax

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')

# Many tests build the same programs anew (a train step, the evaluation
# kernels, a run in a subprocess), and JAX's in-memory caches key on the
# function objects: one on-disk cache for the run, shared by the xdist
# workers and the subprocesses the tests start, compiles each program once.
# A fresh folder per run (the first process makes it and removes it at exit),
# so nothing carries over between runs. Modules that set their own cache
# (tests/test_train_margins.py, tests/test_reproduce.py) restore this one.
_CACHE_VARIABLE = 'TCM_JAX_TEST_COMPILATION_CACHE'
if _CACHE_VARIABLE not in os.environ:
  os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix='tcm_jax_xla_')
  atexit.register(shutil.rmtree, os.environ[_CACHE_VARIABLE], True)
_CACHE_SETTINGS = {
    'jax_compilation_cache_dir': os.environ[_CACHE_VARIABLE],
    'jax_persistent_cache_min_compile_time_secs': 0.0,
    'jax_persistent_cache_min_entry_size_bytes': -1,
}
for _name, _value in _CACHE_SETTINGS.items():
  jax.config.update(_name, _value)
  os.environ.setdefault(_name.upper(), str(_value))
