"""What the commands share: a user's mistake is one line, not a traceback.

`run(main)` is `absl.app.run(main)` for the package's absl commands
(`python -m tcm_jax.main`, `python -m tcm_jax.evaluate`; the argparse ones,
`python -m tcm_jax.data.glyphs` and `scripts/reproduce.py`, keep the same
rule by hand): an error while the flags are parsed (a misspelt
`--config.` override, a value of the wrong type) or while `main` runs prints

  error: <what was wrong, which argument or path, what was received>

on stderr and exits with status 2 (flags) or 1 (everything else); `--verbose`
shows the traceback before that line. Ctrl-C exits with status 130 and one
line; `--help` with status 0. JAX's INFO line about each backend it probes
and cannot start (the TPU's, on a machine without one) is kept out.
"""

from __future__ import annotations

import logging as std_logging
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging

_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'on an error, show the traceback, not only its message.')

USAGE_STATUS = 2   # the command line itself was wrong
ERROR_STATUS = 1   # the work failed (a bad file, a diverged run, ...)
INTERRUPT_STATUS = 130


def one_line(error: BaseException) -> str:
  """An exception's message as one line (its type when it has none).

  >>> one_line(ValueError('bad\\n  value'))
  'bad value'
  >>> one_line(KeyError('model.widht'))
  "KeyError: 'model.widht'"
  >>> one_line(FileNotFoundError(2, 'No such file or directory', 'a.npz'))
  "No such file or directory: 'a.npz'"
  """
  if isinstance(error, OSError) and error.strerror and error.filename:
    text = f'{error.strerror}: {error.filename!r}'
  elif isinstance(error, (ValueError, TypeError, RuntimeError, app.UsageError,
                          flags.Error)) and str(error):
    text = str(error)
  else:
    text = f'{type(error).__name__}: {error}' if str(error) else (
        type(error).__name__)
  # Literal "\n" from messages that were repr()'d (absl's flag errors) too.
  return ' '.join(text.replace('\\n', '\n').split())


def _verbose(argv: Sequence[str]) -> bool:
  """--verbose from the raw arguments: flags may not have parsed."""
  seen = None
  for arg in argv[1:]:
    if arg in ('--verbose', '--verbose=true', '--verbose=True', '--verbose=1'):
      seen = True
    elif arg in ('--noverbose', '--verbose=false', '--verbose=False',
                 '--verbose=0'):
      seen = False
  return bool(seen)


def fail(message: str, status: int = ERROR_STATUS):
  """Prints `error: message` on stderr and exits with `status`."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  raise SystemExit(status)


_HELP = ('--help', '--helpshort', '--helpfull', '--helpxml', '-h', '-?')


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    # absl's --help prints the help and exits with status 1: it succeeded.
    if e.code == 1 and any(arg in _HELP for arg in argv[1:]):
      raise SystemExit(0) from None
    raise
  except Exception as e:  # pylint: disable=broad-except
    if _verbose(argv):
      traceback.print_exc()
    # An unknown flag: the list of flags helps. A value refused names its
    # flag and what it takes.
    hint = (' (--helpfull lists the flags)'
            if isinstance(e, flags.UnrecognizedFlagError) else '')
    fail(one_line(e) + hint, USAGE_STATUS)


def _guarded(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  def guarded(argv: list[str]) -> Any:
    try:
      return main(argv)
    except app.UsageError as e:
      if _VERBOSE.value:
        traceback.print_exc()
      fail(one_line(e), USAGE_STATUS)
    except KeyboardInterrupt:
      if _VERBOSE.value:
        traceback.print_exc()
      fail('interrupted', INTERRUPT_STATUS)
    except Exception as e:  # pylint: disable=broad-except
      if _VERBOSE.value:
        traceback.print_exc()
        fail(one_line(e))
      fail(one_line(e) + ' (--verbose shows the traceback)')
  return guarded


def _no_backend_probe(record: std_logging.LogRecord) -> bool:
  """False for JAX's INFO line about a backend it could not start."""
  return not (record.name.startswith('jax')
              and record.levelno < std_logging.WARNING
              and record.getMessage().startswith('Unable to initialize backend'))


def run(main: Callable[[list[str]], Any],
        argv: Sequence[str] | None = None) -> None:
  """`absl.app.run(main)`, with errors as one line (see the module)."""
  logging.get_absl_handler().addFilter(_no_backend_probe)
  app.run(_guarded(main), argv=None if argv is None else list(argv),
          flags_parser=_parse_flags)
