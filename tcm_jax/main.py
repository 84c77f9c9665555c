r"""Trains an encoder from a config: the command-line entry point.

  python -m tcm_jax.main --config=configs/digits.py --workdir=/tmp/tcm_digits \
      [--config.loss.tcm.enabled=False ...]

--config names a config file whose get_config() returns the run's config
(configs/*.py; configs/README.md lists them). FILE.py:ARG passes ARG to
get_config: --config=configs/cub200.py:vit_b16, configs/digits_toy.py:base
(each file's docstring lists the arguments it takes).

Any config key can then be overridden, one flag each, after --config:
--config.SECTION.KEY=VALUE, e.g. --config.train.num_steps=300
--config.loss.tcm.enabled=False --config.eval.ks='(1, 4)' (a tuple as a
string). An override sets a key that the config has, never adds one: a
misspelt key is an error that lists the keys of its section. The keys, their
defaults and their meaning: docs/training.md ("Config keys"), and
tcm_jax/config.py (default_config). Every value is checked before anything
is built.

The work is done by `tcm_jax.train.train_and_evaluate`, which a notebook can
call directly. A run in a workdir that holds checkpoints resumes from the
latest (with the same config, but for the keys in tcm_jax.config.RESUMABLE);
a finished run is evaluated again. On several hosts (a TPU pod slice, a GPU
cluster) every host runs this same command; JAX's cluster detection connects
them.

An error is one line on stderr, `error: ...` (exit status 2 for the command
line and the config, 1 for the rest); --verbose shows its traceback.
"""

import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tcm_jax import _cli
from tcm_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'A config file, FILE.py or FILE.py:ARG (configs/*.py), whose '
    'get_config(ARG) returns the config; override its keys with '
    '--config.SECTION.KEY=VALUE (listed in docs/training.md, "Config keys").',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for checkpoints, metrics and the report; a run '
    'there is resumed.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'yes', 'no'],
    'Initialise multi-host JAX: auto does it when a cluster is detected '
    '(TPU pod, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS, ...).')
flags.mark_flags_as_required(['config', 'workdir'])


class ConfigError(flags.Error):
  """--config, or an override of one of its keys, is wrong (one line)."""


def _override_keys(argv) -> list[str]:
  """The dotted keys of the `--config.KEY=VALUE` arguments, in order.

  As ml_collections finds them (`--noconfig.KEY` too).

  >>> _override_keys(['main', '--config=c.py', '--config.a.b=1',
  ...                 '--noconfig.c', '--workdir=w'])
  ['a.b', 'c']
  """
  keys = []
  for arg in argv:
    if re.match(r'-{1,2}(no)?config\.', arg):
      keys.append(arg.split('=', 1)[0].split('.', 1)[1])
  return keys


class _ConfigFileParser(flags.ArgumentParser):
  """--config's parser, in place of ml_collections' own: one-line errors.

  The file is read by `tcm_jax.config.load_config` (a missing file, a wrong
  argument: one line naming it), and every `--config.KEY` override is
  checked against the config's keys before ml_collections sees it (its own
  error is a chained traceback, without the valid keys). The values are
  checked by `check_config` in `main`, once the overrides are applied.
  """

  def parse(self, path):
    try:
      config = config_lib.load_config(path, check=False)
    except (OSError, ValueError, TypeError) as error:
      text = (_cli.one_line(error) if isinstance(error, OSError)
              and error.filename else ' '.join(str(error).split()))
      raise ConfigError(f'--config={path}: {text}') from error
    argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
    for key in _override_keys(argv):
      try:
        config_lib.check_override(config, key)
      except ValueError as error:
        raise ConfigError(f'--config.{key}: {error}') from None
    config.lock()  # (as lock_config=True): an override cannot add a key
    return config

  def flag_type(self) -> str:
    return 'config object'


flags.FLAGS['config'].parser = _ConfigFileParser()


def _quiet_logs(record) -> bool:
  """Keeps other libraries' narration out of the run's log.

  Orbax narrates every save at INFO (and warns of each save between
  evaluations, which carry no metrics by design); its errors are left out
  (the trainer raises the failure itself, in one line naming the step, the
  path and the cause), and so are the writes a failed save leaves behind as
  the process ends (asyncio's 'Task exception was never retrieved');
  --verbose shows both, with their tracebacks. (`_cli.run` keeps JAX's
  backend probe out.)
  """
  verbose = flags.FLAGS['verbose'].value
  if '/orbax/' in record.pathname:
    if (record.levelno < std_logging.WARNING
        or 'did not provide metrics' in record.getMessage()):
      return False
    return verbose or record.levelno < std_logging.ERROR
  if (record.name == 'asyncio' and not verbose
      and 'orbax' in record.getMessage()):
    return False
  return True


def _quiet_unraisable(original):
  """`sys.unraisablehook`, without the leftovers of a failed save.

  When a save or a restore fails, Orbax closes its event loop with
  TensorStore operations still pending: each of their callbacks then
  reports `RuntimeError: Event loop is closed` (hundreds of tracebacks, for
  one full disk), and the write coroutines left over report an ImportError
  as Python shuts down. None says anything of the failure, which the
  trainer reports in one line; --verbose shows them.
  """
  def hook(unraisable):
    value = unraisable.exc_value
    noise = (isinstance(value, RuntimeError)
             and str(value) == 'Event loop is closed') or (
                 'orbax' in repr(unraisable.object))
    if noise and not flags.FLAGS['verbose'].value:
      return
    original(unraisable)
  return hook


# The environment variables by which JAX's cluster detection finds each kind
# of cluster (jax._src.clusters), all of which must be set, and the one that
# holds the number of processes (None: the environment does not say).
_CLUSTERS = {
    'JAX_COORDINATOR_ADDRESS': (('JAX_COORDINATOR_ADDRESS',), None),
    'SLURM': (('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
               'SLURM_PROCID', 'SLURM_LOCALID'), 'SLURM_NTASKS'),
    'Open MPI': (('OMPI_MCA_orte_hnp_uri',), 'OMPI_COMM_WORLD_SIZE'),
}
# A Cloud TPU VM's hosts, as JAX reads them on GKE (comma-separated).
_TPU_HOSTS = ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES')


def _installed(package: str) -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec(package) is not None


def _tpu_library(environ, installed) -> bool:
  """Whether JAX would find libtpu: TPU_LIBRARY_PATH, else the package."""
  path = environ.get('TPU_LIBRARY_PATH')
  return bool(path and os.path.isfile(path)) or installed('libtpu')


def detected_cluster(environ=None, installed=None) -> str | None:
  """The kind of cluster this process may run in, or None: one process.

  What JAX's cluster detection looks at: environment variables, Kubernetes
  (with the `kubernetes` package, which JAX needs there) and a Cloud TPU VM
  (libtpu found, by `TPU_LIBRARY_PATH` or the `libtpu` package: JAX then
  asks the TPU metadata server).

  >>> detected_cluster({'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]',
  ...                   'SLURM_NTASKS': '2', 'SLURM_PROCID': '0',
  ...                   'SLURM_LOCALID': '0'})
  'SLURM'
  >>> print(detected_cluster({'HOME': '/root'}, installed=lambda name: False))
  None
  """
  environ = os.environ if environ is None else environ
  installed = _installed if installed is None else installed
  for name, (variables, _) in _CLUSTERS.items():
    if all(environ.get(v) for v in variables):
      return name
  if environ.get('KUBERNETES_SERVICE_HOST') and installed('kubernetes'):
    return 'Kubernetes'
  if _tpu_library(environ, installed):
    return 'a Cloud TPU VM'
  return None


def expected_processes(cluster: str | None, environ=None) -> int | None:
  """How many processes the environment of `cluster` says the run has.

  None where it does not say (Kubernetes, a Cloud TPU VM outside GKE,
  `JAX_COORDINATOR_ADDRESS` alone) or says something that is not a count.

  >>> expected_processes('SLURM', {'SLURM_NTASKS': '4'})
  4
  >>> expected_processes('a Cloud TPU VM', {'TPU_WORKER_HOSTNAMES': 'a,b'})
  2
  >>> print(expected_processes('Kubernetes', {}))
  None
  """
  environ = os.environ if environ is None else environ
  if cluster in _CLUSTERS:
    variable = _CLUSTERS[cluster][1]
    value = environ.get(variable, '') if variable else ''
    return int(value) if value.strip().isdigit() else None
  if cluster == 'a Cloud TPU VM':
    for variable in _TPU_HOSTS:
      if environ.get(variable):
        return len(environ[variable].split(','))
  return None


def _initialise_distributed(jax, mode: str | None = None,
                            environ=None) -> None:
  """`jax.distributed.initialize()` where a cluster is detected (or asked).

  A failure is an error with `--distributed=yes`, and where the environment
  asks for a cluster: it names several processes (SLURM_NTASKS=4, ...) or
  `JAX_COORDINATOR_ADDRESS`; carrying on as one process there would train
  one separate copy of the run per process, all in one workdir. Elsewhere
  (Kubernetes, a TPU VM that may have one host) a warning, and one process.
  """
  mode = _DISTRIBUTED.value if mode is None else mode
  if mode == 'no':
    return
  cluster = detected_cluster(environ)
  if cluster is None and mode == 'auto':
    logging.debug('No cluster detected: one process.')
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    expected = expected_processes(cluster, environ)
    if mode == 'yes':
      raise RuntimeError(
          f'--distributed=yes: jax.distributed.initialize() failed '
          f'({_cli.one_line(e)}).') from e
    if (expected or 0) > 1 or cluster == 'JAX_COORDINATOR_ADDRESS':
      said = (f'{expected} processes' if expected
              else 'a cluster (JAX_COORDINATOR_ADDRESS)')
      raise RuntimeError(
          f'{cluster} asks for {said}, but jax.distributed.initialize() '
          f'failed ({_cli.one_line(e)}); fix the cluster set-up, or pass '
          '--distributed=no to run as one process.') from e
    logging.warning('Running as a single process: %s looked like a cluster, '
                    'but jax.distributed.initialize() failed (%s).', cluster,
                    _cli.one_line(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]} (flags take the '
                         'form --name=value).')
  config, workdir = _CONFIG.value, _WORKDIR.value
  logging.get_absl_handler().addFilter(_quiet_logs)
  sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
  logging.info('Checking the config %s and its overrides ...',
               config_flags.get_config_filename(flags.FLAGS['config']))
  try:
    config_lib.check_config(config)  # with the overrides: before anything
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  logging.info('Starting JAX ...')
  # pylint: disable=import-outside-toplevel
  import jax
  from tcm_jax import report
  from tcm_jax import train
  # pylint: enable=import-outside-toplevel
  _initialise_distributed(jax)
  logging.info('JAX process %d of %d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  final = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    _, baselines = report.load_results(workdir)
    print(report.results_table(final, baselines, epsilon=config.eval.epsilon))
    print(report.paths_text(workdir))


if __name__ == '__main__':
  _cli.run(main)
