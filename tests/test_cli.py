"""The commands' error convention (tcm_jax._cli): one line, a status, no traceback."""

import subprocess
import sys
import textwrap

from absl import app
from absl import flags
import pytest

from tcm_jax import _cli

_COMMAND = textwrap.dedent('''
    from absl import flags
    from tcm_jax import _cli
    _X = flags.DEFINE_integer('x', 1, 'a number')
    def main(argv):
      if _X.value == 3:
        raise ValueError('--x is 3,\\n  which this command refuses')
      if _X.value == 4:
        raise KeyboardInterrupt
      print('x =', _X.value)
    if __name__ == '__main__':
      _cli.run(main)
''')


@pytest.fixture(scope='module')
def command(tmp_path_factory):
  path = tmp_path_factory.mktemp('cli') / 'command.py'
  path.write_text(_COMMAND)

  def call(*args):
    return subprocess.run([sys.executable, str(path), *args],
                          capture_output=True, text=True, timeout=120)
  return call


@pytest.mark.parametrize('args, status, message', [
    (['--x=3'], 1, 'error: --x is 3, which this command refuses '
                   '(--verbose shows the traceback)'),
    (['--x=abc'], 2, "error: flag --x=abc: invalid literal for int() with "
                     "base 10: 'abc'"),
    (['--y=2'], 2, "error: Unknown command line flag 'y' "
                   '(--helpfull lists the flags)'),
    (['--x=4'], 130, 'error: interrupted'),
])
def test_an_error_is_one_line_and_a_status(command, args, status, message):
  done = command(*args)
  assert done.returncode == status
  assert done.stderr.strip().splitlines() == [message]
  assert done.stdout == ''


def test_success_and_verbose(command):
  done = command('--x=2')
  assert (done.returncode, done.stdout, done.stderr) == (0, 'x = 2\n', '')
  done = command('--x=3', '--verbose')
  assert done.returncode == 1
  assert 'Traceback' in done.stderr and 'ValueError' in done.stderr
  assert done.stderr.splitlines()[-1] == (
      'error: --x is 3, which this command refuses')
  done = command('--x=abc', '--verbose')
  assert done.returncode == 2 and 'Traceback' in done.stderr
  done = command('--help')
  assert done.returncode == 0 and '--x' in done.stdout + done.stderr


def test_one_line():
  assert _cli.one_line(ValueError('a\n   b\\nc')) == 'a b c'
  assert _cli.one_line(app.UsageError('no such flag')) == 'no such flag'
  assert _cli.one_line(flags.IllegalFlagValueError('x')) == 'x'
  assert _cli.one_line(KeyError('loss.nme')) == "KeyError: 'loss.nme'"
  assert _cli.one_line(RuntimeError()) == 'RuntimeError'
  assert _cli.one_line(PermissionError(13, 'Permission denied', '/out')) == (
      "Permission denied: '/out'")
  assert _cli.one_line(OSError('disk full')) == 'OSError: disk full'
