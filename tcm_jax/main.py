r"""Trains an encoder from a config: the command-line entry point.

  python -m tcm_jax.main --config configs/digits.py --workdir /tmp/tcm_digits \
      [--config.loss.tcm.enabled=False ...]

The work is done by `tcm_jax.train.train_and_evaluate`, which a notebook can
call directly. A run in a workdir that holds checkpoints resumes from the
latest. On several hosts (a TPU pod slice, a GPU cluster) every host runs
this same command; JAX's cluster detection connects them.
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from tcm_jax import report
from tcm_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file (configs/*.py) with get_config().',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for checkpoints, metrics and the report.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'yes', 'no'],
    'Initialise multi-host JAX: auto does it when a cluster is detected '
    '(TPU pod, SLURM, Open MPI, ...).')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record) -> bool:
  """Orbax narrates every save at INFO; keep its real warnings and errors.

  (Saves between evaluations carry no metrics by design; Orbax warns each.)
  """
  if '/orbax/' not in record.pathname:
    return True
  return (record.levelno >= std_logging.WARNING
          and 'did not provide metrics' not in record.getMessage())


def _initialise_distributed() -> None:
  if _DISTRIBUTED.value == 'no':
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    if _DISTRIBUTED.value == 'yes':
      raise
    logging.info('Running as a single process (%s).', e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  _initialise_distributed()
  logging.info('JAX process %d of %d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    final = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.NonFiniteLossError as e:
    raise SystemExit(f'ERROR: {e}') from e
  if jax.process_index() == 0:
    _, baselines = report.load_results(_WORKDIR.value)
    print(report.results_table(final, baselines))
    print(f'Report: {_WORKDIR.value}/report.md')


if __name__ == '__main__':
  app.run(main)
