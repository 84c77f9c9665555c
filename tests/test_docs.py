"""The documentation site (docs/): it builds without a warning, its API
reference documents every public name, its links resolve, and the code blocks
of its pages run."""

import importlib
import inspect
import pathlib
import pkgutil
import posixpath
import re
import subprocess
import sys

import pytest

import tcm_jax

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs'
API = DOCS / 'api'
# The command lines define absl flags when imported: documented on the pages,
# not by autodoc.
COMMANDS = ('tcm_jax.main', 'tcm_jax.evaluate')


def _pages() -> list[pathlib.Path]:
  return sorted(p for p in DOCS.rglob('*.md') if '_build' not in p.parts)


def _page_id(path: pathlib.Path) -> str:
  if REPO not in path.parents:
    return path.name
  return path.relative_to(REPO).as_posix()


# --- The public names and where the API reference documents them --------------


def _own_public_names(module) -> list[str]:
  """The public classes and functions a module without `__all__` defines."""
  return [name for name, value in vars(module).items()
          if not name.startswith('_')
          and (inspect.isclass(value) or inspect.isfunction(value))
          and value.__module__ == module.__name__]


def _is_old_path(module) -> bool:
  """A deprecated module path: it only serves names that moved elsewhere."""
  return (hasattr(getattr(module, '__getattr__', None), 'new_homes')
          and not _own_public_names(module)
          and not getattr(module, '__all__', None))


def _documented_as(package, name: str) -> str:
  """Where the API reference documents a name `package` exports."""
  if package is tcm_jax:  # its page lists them; their homes document them
    return f'{tcm_jax._EXPORTS[name]}.{name}'  # pylint: disable=protected-access
  return f'{package.__name__}.{name}'


def _documented_names() -> dict[str, dict[str, str]]:
  """`{module: {public name: the name the API reference documents it as}}`.

  A module's public names are its `__all__` (submodules aside), or without
  one the classes and functions it defines. Those its package exports are
  documented with the package, and a module all of whose names its package
  exports has no page of its own; nor have private modules, old module paths
  and the command lines.
  """
  result = {'tcm_jax': {name: _documented_as(tcm_jax, name)
                        for name in tcm_jax._EXPORTS}}  # pylint: disable=protected-access
  for info in pkgutil.walk_packages(tcm_jax.__path__, prefix='tcm_jax.'):
    name = info.name
    if any(part.startswith('_') for part in name.split('.')):
      continue
    if name in COMMANDS:
      continue
    module = importlib.import_module(name)
    if _is_old_path(module):
      continue
    if getattr(module, '__all__', None) is not None:
      names = [n for n in module.__all__
               if not inspect.ismodule(getattr(module, n))]
    else:
      names = _own_public_names(module)
    package = importlib.import_module(name.rpartition('.')[0])
    exported = set(getattr(package, '__all__', ()))
    if not info.ispkg and names and set(names) <= exported:
      continue
    result[name] = {n: (_documented_as(package, n) if n in exported
                        else f'{name}.{n}') for n in names}
  return result


def test_every_public_module_has_an_api_page():
  pages = {p.stem for p in API.glob('*.md')} - {'index'}
  assert sorted(pages) == sorted(_documented_names())
  index = (API / 'index.md').read_text(encoding='utf-8')
  for module in pages:
    text = (API / f'{module}.md').read_text(encoding='utf-8')
    assert f'automodule:: {module}\n' in text, module
    assert re.search(rf'^{re.escape(module)}$', index, flags=re.M), module


def test_the_top_level_page_lists_every_top_level_name():
  text = (API / 'tcm_jax.md').read_text(encoding='utf-8')
  for name, home in tcm_jax._EXPORTS.items():  # pylint: disable=protected-access
    assert f'`tcm_jax.{name}`' in text, name
    assert f'`{home}.{name}`' in text, name


# --- The build -------------------------------------------------------------------


@pytest.fixture(scope='module')
def built_site(tmp_path_factory):
  """The site built as its documented command builds it, with warnings as
  errors (and every warning shown: --keep-going)."""
  out = tmp_path_factory.mktemp('docs_html')
  run = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
       'html', str(DOCS), str(out)],
      cwd=REPO, capture_output=True, text=True, check=False)
  return out, run


@pytest.mark.slow
def test_the_site_builds_without_a_warning(built_site):
  _, run = built_site
  warnings = [line for line in run.stderr.splitlines()
              if 'WARNING' in line or 'ERROR' in line]
  assert run.returncode == 0 and not warnings, run.stderr[-5000:]


@pytest.mark.slow
def test_the_api_reference_documents_every_public_name(built_site):
  out, run = built_site
  from sphinx.util.inventory import InventoryFile  # pylint: disable=import-outside-toplevel
  with open(out / 'objects.inv', 'rb') as f:
    inventory = InventoryFile.load(f, '', posixpath.join)
  documented = {name for kind, entries in inventory.items()
                if kind.startswith('py:') for name in entries}
  missing = sorted(f'{module}.{name} (as {as_name})'
                   for module, names in _documented_names().items()
                   for name, as_name in names.items()
                   if as_name not in documented)
  assert not missing, (missing, run.stderr[-2000:])


# --- Links -------------------------------------------------------------------


_FENCE = re.compile(r'^(```|~~~).*?^\1\s*$', flags=re.S | re.M)
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading (MyST makes the same)."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links: their text
  text = text.replace('`', '').strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path: pathlib.Path) -> set[str]:
  text = _FENCE.sub('', path.read_text(encoding='utf-8'))
  anchors, seen = set(), {}
  for heading in re.findall(r'^#{1,6}\s+(.*?)\s*#*\s*$', text, flags=re.M):
    slug = _slug(heading)
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    anchors.add(slug if not count else f'{slug}-{count}')
  return anchors


def _relative_links(path: pathlib.Path) -> list[str]:
  text = _FENCE.sub('', path.read_text(encoding='utf-8'))
  text = re.sub(r'`[^`\n]*`', '', text)  # inline code
  return [target for target in _LINK.findall(text)
          if not re.match(r'^[a-z][a-z0-9+.-]*:', target)]  # not a URL


@pytest.mark.parametrize('path', [REPO / 'README.md', *_pages()], ids=_page_id)
def test_relative_links_point_to_files_and_headings(path):
  for target in _relative_links(path):
    file_part, _, anchor = target.partition('#')
    linked = (path.parent / file_part).resolve() if file_part else path
    assert linked.exists(), f'{_page_id(path)}: {target} does not exist'
    if anchor and linked.suffix == '.md':
      assert anchor in _anchors(linked), (
          f'{_page_id(path)}: {target}: no heading with that anchor')


def test_the_link_check_finds_a_broken_link(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('# A heading\n\n[ok](#a-heading) [bad](missing.md)\n'
                  '```python\n[not a link](nowhere.md)\n```\n')
  assert _relative_links(page) == ['#a-heading', 'missing.md']
  assert _anchors(page) == {'a-heading'}
  with pytest.raises(AssertionError, match='missing.md does not exist'):
    test_relative_links_point_to_files_and_headings(page)


# --- Code blocks ---------------------------------------------------------------


def _blocks(path: pathlib.Path, language: str) -> list[str]:
  return re.findall(rf'^```{language}\n(.*?)^```', path.read_text(encoding='utf-8'),
                    flags=re.S | re.M)


_WITH_PYTHON = [p for p in _pages() if _blocks(p, 'python')]
# Pages whose examples take more than about 20 s on a 2-core CPU (compiling a
# ResNet's training step): run with the slow tests.
_SLOW_PAGES = ('encoders',)


@pytest.mark.parametrize('path', [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in _SLOW_PAGES else p
    for p in _WITH_PYTHON], ids=_page_id)
def test_the_python_blocks_of_a_page_run_in_order(path):
  namespace = {'__name__': f'docs_{path.stem}'}
  for block in _blocks(path, 'python'):
    exec(compile(block, str(path), 'exec'), namespace)  # pylint: disable=exec-used


def test_the_pages_with_code_are_the_ones_expected():
  # A page whose examples stop running as Python (a fence renamed) is noticed.
  assert {p.stem for p in _WITH_PYTHON} >= {
      'index', 'definitions', 'tcm_loss', 'measuring', 'encoders', 'datasets',
      'glyphs'}


@pytest.mark.parametrize('path', [p for p in _pages() if _blocks(p, 'py')],
                         ids=_page_id)
def test_the_py_blocks_that_need_downloads_compile(path):
  # ```py blocks load files that cannot be downloaded here: checked for syntax.
  for block in _blocks(path, 'py'):
    compile(block, str(path), 'exec')


# --- What moved out of the README -------------------------------------------


def test_every_config_key_is_documented():
  from tcm_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  text = (DOCS / 'training.md').read_text(encoding='utf-8')

  def keys(section, prefix=''):
    for key, value in section.items():
      if hasattr(value, 'items'):
        yield from keys(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}'

  undocumented = []
  for key in keys(config_lib.default_config()):
    parts = key.split('.')
    wildcards = [f"`{'.'.join(parts[:i])}.*`" for i in range(1, len(parts))]
    if f'`{key}`' not in text and not any(w in text for w in wildcards):
      undocumented.append(key)
  assert not undocumented, undocumented


def test_the_build_command_is_documented():
  command = ('python -m pip install -c constraints.txt -e ".[docs]" && '
             'sphinx-build -W -b html docs docs/_build/html')
  for path in (REPO / 'README.md', DOCS / 'getting_started.md'):
    assert command in path.read_text(encoding='utf-8').splitlines(), path
  assert 'docs/_build/' in (REPO / '.gitignore').read_text().splitlines()
