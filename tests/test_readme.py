"""Each of the README's Python code blocks runs on its own, and its test
command is the one CI runs."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def _python_blocks():
  return re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)


def test_each_readme_example_runs_alone_and_tcm_falls(capsys):
  # The README's example: an optax loop with TCM on a toy batch. The other
  # examples are on the docs' pages (tests/test_docs.py). Each block gets a
  # fresh namespace: a reader copies one block, not the page.
  blocks = _python_blocks()
  assert blocks
  for block in blocks:
    namespace = {}
    exec(compile(block, str(README), 'exec'), namespace)  # pylint: disable=exec-used
  assert 'TCM term' in capsys.readouterr().out
  assert np.isfinite(float(namespace['loss']))
  assert float(namespace['tcm_after']) < 0.5 * float(namespace['tcm_before'])


def test_ci_runs_the_readme_test_command():
  commands = re.findall(r'^python -m pip install .*pytest.*$',
                        README.read_text(), flags=re.M)
  assert len(commands) == 1
  ci_script = (README.parent / '.ci' / 'run').read_text()
  assert commands[0] in ci_script.splitlines()
