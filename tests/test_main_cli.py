"""`python -m tcm_jax.main`: its errors are one line, and --help says enough.

Each case is a command that fails before training (so each takes seconds):
its status is not 0, and its stderr holds one `error: ...` line, the last,
after nothing but the trainer's INFO log lines, and no traceback.
"""

import logging
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = '--config=configs/digits.py'


def _main(*args, timeout=180):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'tcm_jax.main', *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _another_run(workdir):
  """A workdir whose checkpoint is of configs/digits.py (model.width 0.25)."""
  config = config_lib.load_config(str(REPO / 'configs' / 'digits.py'))
  assert config.model.width == 0.25
  with checkpoint_lib.Checkpointer(str(workdir / 'checkpoints')) as ckpt:
    ckpt.save(100, {'w': np.ones(2, np.float32)}, data_state={'step': 100},
              config=checkpoint_lib.json_safe(config.to_dict()))


def _file(workdir):
  workdir.write_text('not a folder')


# name: (the arguments after --workdir, what makes the workdir, the status,
# the start of the error line).
CASES = {
    'misspelt_override': (
        [DIGITS, '--config.loss.tcm.enabeld=False'], None, 2,
        'error: --config.loss.tcm.enabeld: no config key loss.tcm.enabeld '
        '(did you mean loss.tcm.enabled?); loss.tcm has: enabled, lambda_neg, '
        'lambda_pos, margin_neg, margin_pos.'),
    'missing_config_file': (
        ['--config=configs/no_such.py'], None, 2,
        "error: --config=configs/no_such.py: config file 'configs/no_such.py' "
        'not found'),
    'wrong_config_argument': (
        ['--config=configs/digits_toy.py:tcn'], None, 2,
        "error: --config=configs/digits_toy.py:tcn: configs/digits_toy.py "
        "takes one of ['tcm', 'base'], got 'tcn'."),
    'negative_steps': (
        [DIGITS, '--config.train.num_steps=-5'], None, 2,
        'error: train.num_steps must be an int >= 0, got -5.'),
    'one_sample_per_class': (
        [DIGITS, '--config.input.samples_per_class=1'], None, 2,
        'error: input.samples_per_class must be an int >= 2'),
    'workdir_is_a_file': (
        [DIGITS], _file, 1,
        'error: workdir must be a folder'),
    'workdir_of_another_run': (
        [DIGITS, '--config.model.width=0.5'], _another_run, 1,
        'error: {workdir} holds a run with another config: model.width 0.25 '
        "vs 0.5 (saved vs this run's)"),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_an_error_before_training_is_one_line(case, tmp_path):
  args, make, status, error = CASES[case]
  workdir = tmp_path / 'run'
  if make is not None:
    make(workdir)
  run = _main(f'--workdir={workdir}', *args)
  assert run.returncode == status, run.stderr[-3000:]
  lines = run.stderr.splitlines()
  assert lines[-1].startswith(error.format(workdir=workdir)), run.stderr[-3000:]
  # Before it, absl's INFO lines only (I1202 10:18:06.742337 ... main.py:229]):
  # no warning, no second error, no stray output of a library.
  others = [line for line in lines[:-1]
            if not re.match(r'I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ', line)]
  assert not others, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  assert run.stdout == ''
  if case == 'workdir_of_another_run':
    # Said before the model is built or any array read, after a first line.
    assert lines[0].endswith('Checking the config configs/digits.py and its '
                             'overrides ...'), lines[0]
    assert 'Building resnet18' not in run.stderr


def test_verbose_shows_the_traceback(tmp_path):
  workdir = tmp_path / 'run'
  _file(workdir)
  run = _main(f'--workdir={workdir}', DIGITS, '--verbose')
  assert run.returncode != 0
  assert 'Traceback' in run.stderr
  assert 'ValueError: workdir must be a folder' in run.stderr


def test_help_says_how_to_set_the_config():
  run = _main('--help')
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stderr == ''
  text = ' '.join(run.stdout.split())
  for words in ('--config.SECTION.KEY=VALUE', '--config.train.num_steps=300',
                'FILE.py:ARG', 'configs/cub200.py:vit_b16',
                'docs/training.md ("Config keys")', 'default_config',
                'never adds one', '--verbose', '--workdir', '--distributed'):
    assert words in text, words


class _FailingJax:
  """A `jax` whose `distributed.initialize()` fails, and counts its calls."""

  def __init__(self):
    self.calls = 0
    self.distributed = self

  def initialize(self):
    self.calls += 1
    raise RuntimeError('Failed to connect to the coordinator\nat 10.0.0.1')


SLURM = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'localhost',
         'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}


@pytest.mark.parametrize('environ, said', [
    ({**SLURM, 'SLURM_NTASKS': '2'}, 'SLURM asks for 2 processes'),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'},
     'JAX_COORDINATOR_ADDRESS asks for a cluster (JAX_COORDINATOR_ADDRESS)'),
    ({'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '8'},
     'Open MPI asks for 8 processes'),
])
def test_a_cluster_that_cannot_connect_is_an_error(environ, said):
  from tcm_jax import main  # pylint: disable=import-outside-toplevel
  fake = _FailingJax()
  with pytest.raises(RuntimeError) as error:
    main._initialise_distributed(fake, 'auto', environ)
  assert fake.calls == 1
  assert str(error.value).startswith(said), error.value
  assert '--distributed=no' in str(error.value)
  assert '\n' not in str(error.value)


def test_one_process_where_the_cluster_may_have_one_host(caplog, monkeypatch):
  from tcm_jax import main  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(main, '_installed', lambda name: name == 'kubernetes')
  fake = _FailingJax()
  for environ in ({'KUBERNETES_SERVICE_HOST': '10.0.0.2'},
                  {**SLURM, 'SLURM_NTASKS': '1'}):
    with caplog.at_level(logging.WARNING):
      main._initialise_distributed(fake, 'auto', environ)
  assert fake.calls == 2
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith('Running as a single process: Kubernetes')
  # Asked for explicitly: an error even so; not asked for: never called.
  with pytest.raises(RuntimeError, match='^--distributed=yes: '):
    main._initialise_distributed(fake, 'yes', {})
  main._initialise_distributed(fake, 'no', {**SLURM, 'SLURM_NTASKS': '2'})
  main._initialise_distributed(fake, 'auto', {'HOME': '/root'})
  assert fake.calls == 3


def test_libtpu_is_found_where_jax_finds_it(tmp_path):
  from tcm_jax import main  # pylint: disable=import-outside-toplevel
  library = tmp_path / 'libtpu.so'
  library.write_bytes(b'')
  nothing = lambda name: False
  assert main.detected_cluster({'TPU_LIBRARY_PATH': str(library)},
                               nothing) == 'a Cloud TPU VM'
  assert main.detected_cluster(
      {'TPU_LIBRARY_PATH': str(tmp_path / 'missing.so')}, nothing) is None
  assert main.expected_processes(
      'a Cloud TPU VM', {'TPU_PROCESS_ADDRESSES': 'h1:8476,h2:8476'}) == 2


_CONNECT = textwrap.dedent("""
    import jax
    from tcm_jax import main
    main._initialise_distributed(jax, 'auto')
    print(jax.process_count(), jax.process_index())
""")


def test_two_processes_of_a_slurm_job_connect(tmp_path):
  """The real `jax.distributed.initialize`, found by the SLURM environment."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  runs = []
  for process in range(2):
    env = {**os.environ, **SLURM, 'SLURM_NTASKS': '2',
           'SLURM_PROCID': str(process), 'JAX_COORDINATOR_PORT': str(port),
           'JAX_PLATFORMS': 'cpu'}
    runs.append(subprocess.Popen(
        [sys.executable, '-c', _CONNECT], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  outputs = [run.communicate(timeout=120) for run in runs]
  for process, (run, (out, err)) in enumerate(zip(runs, outputs)):
    assert run.returncode == 0, err[-3000:]
    assert out.split() == ['2', str(process)], (out, err[-3000:])


def _record(name, level, message, pathname='x.py'):
  return logging.LogRecord(name, level, pathname, 1, message, None, None)


@pytest.mark.parametrize('verbose', [False, True])
def test_orbax_errors_and_the_backend_probe_stay_out_of_the_log(
    verbose, monkeypatch):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from tcm_jax import _cli, main  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(flags.FLAGS['verbose'], 'value', verbose)
  orbax = '/site-packages/orbax/checkpoint/future.py'
  # A failed save's errors: the trainer raises it itself, in one line.
  assert main._quiet_logs(_record(
      'absl', logging.ERROR, 'cannot schedule new futures', orbax)) == verbose
  assert main._quiet_logs(_record('absl', logging.WARNING, 'slow', orbax))
  assert not main._quiet_logs(_record('absl', logging.INFO, 'saved', orbax))
  assert main._quiet_logs(_record('absl', logging.ERROR, 'ours'))
  probe = _record('jax._src.xla_bridge', logging.INFO,
                  "Unable to initialize backend 'tpu': no TPU")
  assert not _cli._no_backend_probe(probe)
  assert _cli._no_backend_probe(_record('jax._src.xla_bridge', logging.WARNING,
                                        'Unable to initialize backend x'))
