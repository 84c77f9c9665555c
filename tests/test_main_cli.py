"""`python -m tcm_jax.main`: its errors are one line, and --help says enough.

Each case is a command that fails before training (so each takes seconds):
its status is not 0, and its stderr holds one `error: ...` line, the last,
and no traceback.
"""

import os
import pathlib
import subprocess
import sys

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
  assert [line for line in lines if 'error' in line.lower()] == lines[-1:], (
      run.stderr[-3000:])
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
  run = _main('--help')  # (absl's --help exits with status 1)
  assert run.stderr == ''
  text = ' '.join(run.stdout.split())
  for words in ('--config.SECTION.KEY=VALUE', '--config.train.num_steps=300',
                'FILE.py:ARG', 'configs/cub200.py:vit_b16',
                'docs/training.md ("Config keys")', 'default_config',
                'never adds one', '--verbose', '--workdir', '--distributed'):
    assert words in text, words
