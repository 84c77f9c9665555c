r"""Generates the notebooks `colabs/*.ipynb` from their jupytext sources.

  python colabs/build.py           # regenerate every notebook from its .py
  python colabs/build.py --check   # exit 1, listing the notebooks out of sync

Each `colabs/<name>.py` (jupytext percent format) is the source of
`colabs/<name>.ipynb`. The generated notebooks hold no outputs, and their
metadata and cell ids are fixed (the kernelspec and Colab's keys from the
source's header; cell ids numbered in order), so that the same source always
gives the same file, byte for byte: `--check` compares them exactly, and so
does `tests/test_colabs.py` with the jupytext and nbformat pinned in
constraints.txt (with other versions it compares the cells and metadata).
Sources whose names start with `_` are not notebooks and are skipped.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jupytext
import nbformat

# The GitHub repository the notebooks' "Open in Colab" badges and install
# cells point to: change it here (the test reads it from this module).
GITHUB_REPO = 'tcm-jax/tcm_jax'
COLABS = pathlib.Path(__file__).resolve().parent
NOT_NOTEBOOKS = frozenset({'build.py'})
# Notebook metadata kept from a source's header (Colab reads `accelerator`
# and `colab` to choose the runtime); everything else, jupytext's own
# bookkeeping included, is dropped.
KEPT_METADATA = ('accelerator', 'colab', 'kernelspec')
KERNELSPEC = {'display_name': 'Python 3', 'language': 'python',
              'name': 'python3'}


def colab_url(name: str) -> str:
  """Where Colab opens the notebook `name` from GitHub."""
  return (f'https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/'
          f'colabs/{name}.ipynb')


def badge(name: str) -> str:
  """The "Open in Colab" badge line of the notebook `name`."""
  return ('[![Open In Colab](https://colab.research.google.com/assets/'
          f'colab-badge.svg)]({colab_url(name)})')


def sources(directory: pathlib.Path = COLABS) -> list[pathlib.Path]:
  """The notebook sources in `directory`: every `.py` but this script."""
  return sorted(path for path in directory.glob('*.py')
                if path.name not in NOT_NOTEBOOKS
                and not path.name.startswith('_'))


def notebook(source: pathlib.Path) -> nbformat.NotebookNode:
  """The clean notebook of a jupytext percent-format source."""
  nb = jupytext.read(source, fmt='py:percent')
  metadata = {key: nb.metadata[key] for key in KEPT_METADATA
              if key in nb.metadata}
  metadata.setdefault('kernelspec', KERNELSPEC)
  metadata['language_info'] = {'name': 'python'}
  nb.metadata = nbformat.from_dict(metadata)
  nb.nbformat, nb.nbformat_minor = 4, 5
  for index, cell in enumerate(nb.cells):
    cell.id = f'cell-{index:02d}'
    tags = cell.metadata.get('tags')
    cell.metadata = nbformat.from_dict({'tags': tags} if tags else {})
    if cell.cell_type == 'code':
      cell.outputs, cell.execution_count = [], None
  nbformat.validate(nb)
  return nb


def render(source: pathlib.Path) -> str:
  """The text of the `.ipynb` generated from `source`."""
  return nbformat.writes(notebook(source), version=4) + '\n'


def target(source: pathlib.Path) -> pathlib.Path:
  return source.with_suffix('.ipynb')


def out_of_sync(directory: pathlib.Path = COLABS) -> list[str]:
  """Names of the notebooks whose `.ipynb` is missing or differs from its source.

  An `.ipynb` without a source counts too (a deleted or renamed source).
  """
  stale = [source.stem for source in sources(directory)
           if not target(source).exists()
           or target(source).read_text(encoding='utf-8') != render(source)]
  names = {source.stem for source in sources(directory)}
  orphans = [path.stem for path in sorted(directory.glob('*.ipynb'))
             if path.stem not in names]
  return sorted(stale + orphans)


def build(directory: pathlib.Path = COLABS) -> list[str]:
  """Writes every notebook of `directory` that is out of sync; returns them."""
  written = []
  for source in sources(directory):
    text = render(source)
    path = target(source)
    if not path.exists() or path.read_text(encoding='utf-8') != text:
      path.write_text(text, encoding='utf-8', newline='\n')
      written.append(path.name)
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a notebook is out of sync')
  args = parser.parse_args(argv)
  if args.check:
    stale = out_of_sync()
    if stale:
      print('Out of sync with their sources (run python colabs/build.py):\n  '
            + '\n  '.join(f'colabs/{name}.ipynb' for name in stale))
      return 1
    print(f'{len(sources())} notebooks in sync.')
    return 0
  written = build()
  orphans = [name for name in out_of_sync()
             if not (COLABS / f'{name}.py').exists()]
  print(f'wrote {len(written)} of {len(sources())} notebooks'
        + (f': {", ".join(written)}' if written else ''))
  if orphans:
    print('notebooks without a source (delete them): '
          + ', '.join(f'{name}.ipynb' for name in orphans))
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
