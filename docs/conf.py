"""Sphinx configuration of the tcm_jax documentation site.

Build it from the repository root:

  python -m pip install -c constraints.txt -e ".[docs]"
  sphinx-build -W -b html docs docs/_build/html
"""

import pathlib
import sys
import types
import typing
import warnings

# The package is imported from the checkout, whether or not it is installed.
_REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPOSITORY))

from docutils import nodes  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
from sphinx import addnodes  # pylint: disable=wrong-import-position
from sphinx.transforms.post_transforms import SphinxPostTransform  # pylint: disable=wrong-import-position
import tcm_jax  # pylint: disable=wrong-import-position

# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 10 will remove; the
# warning is about the extension, not these docs.
warnings.filterwarnings('ignore', message='.*set_application.*is deprecated')

project = 'tcm_jax'
author = 'the tcm_jax authors'
copyright = 'the tcm_jax authors, Apache-2.0'  # pylint: disable=redefined-builtin
release = version = tcm_jax.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx_autodoc_typehints',
]

source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
html_title = f'tcm_jax {release}'
html_static_path = []

# Markdown: $...$ and $$...$$ math, ::: fences, and GitHub-style anchors on
# headings, so that `page.md#a-section` links work here as on GitHub.
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence']
myst_heading_anchors = 3

# The docstrings are Google style, with `code` in single backticks.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# `Attributes:` as a field list of the class, so that autodoc's own entries
# for the fields are not described twice.
napoleon_use_ivar = True
default_role = 'code'

autodoc_default_options = {
    'members': True,
    'member-order': 'bysource',
}
typehints_use_signature = False
typehints_use_signature_return = False
typehints_document_rtype = True
always_document_param_types = False


# `jax.typing.ArrayLike` is a Union of eight types: show its name.
def _format_type(annotation, config):  # pylint: disable=unused-argument
  """`typehints_formatter`: `jax.typing.ArrayLike` (or None) by name."""
  array_like = set(typing.get_args(jax.typing.ArrayLike))
  if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
    return None
  args = set(typing.get_args(annotation))
  if args == array_like:
    return ':py:data:`~jax.typing.ArrayLike`'
  if args == array_like | {type(None)}:
    return ':py:data:`~jax.typing.ArrayLike` | :py:obj:`None`'
  return None


typehints_formatter = _format_type
# A function in the config keeps Sphinx from caching it between builds (each
# build then reads every page again): nothing to act on.
suppress_warnings = ['config.cache']


def _skip_field_aliases(app, what, name, obj, skip, options):
  """NamedTuple fields are listed in their class's `Attributes`: skip the
  entries autodoc makes for them ("Alias for field number 0")."""
  del app, what, name, options
  if (getattr(obj, '__doc__', None) or '').startswith('Alias for field number'):
    return True
  return skip


# The pages link to the repository's other files relatively, as GitHub shows
# them (`../configs/README.md`, `../colabs/digits_toy.ipynb`). On the site,
# a file that is a page here links to that page; any other file outside
# docs/ links to GitHub.
GITHUB_FILES = 'https://github.com/tcm-jax/tcm_jax/blob/main/'
PAGES_OF_FILES = {
    'REPRODUCTION.md': 'reproduction',
    'BENCHMARKS.md': 'speed',
    'CHANGELOG.md': 'changelog',
}


class RepositoryLinks(SphinxPostTransform):
  """Links to files outside docs/: to their page here, or to GitHub."""

  default_priority = 5  # before MyST resolves its links (9)

  def _outside(self, path: pathlib.Path) -> str | None:
    path = path.resolve()
    srcdir = pathlib.Path(self.env.srcdir).resolve()
    if srcdir in path.parents or not path.is_file():
      return None
    try:
      return path.relative_to(_REPOSITORY).as_posix()
    except ValueError:
      return None

  def _to_github(self, node, relative: str, anchor: str | None) -> None:
    url = GITHUB_FILES + relative + (f'#{anchor}' if anchor else '')
    node.replace_self(nodes.reference('', '', *node.children, refuri=url))

  def run(self, **kwargs) -> None:
    del kwargs
    for node in list(self.document.findall(addnodes.pending_xref)):
      if node.get('reftype') != 'myst' or node.get('refdomain') != 'doc':
        continue
      if node['reftarget'] in self.env.all_docs:
        continue
      relative = self._outside(pathlib.Path(node['reftarget'] + '.md'))
      if relative is None:
        continue
      if relative in PAGES_OF_FILES:
        node['reftarget'] = PAGES_OF_FILES[relative]
      else:
        self._to_github(node, relative, node.get('reftargetid'))
    for node in list(self.document.findall(addnodes.download_reference)):
      if node.get('reftype') != 'myst':
        continue
      page_dir = pathlib.Path(self.env.doc2path(node['refdoc'])).parent
      relative = self._outside(page_dir / node['reftarget'])
      if relative is not None:
        self._to_github(node, relative, None)


def setup(app):
  app.add_post_transform(RepositoryLinks)
  app.connect('autodoc-skip-member', _skip_field_aliases)
