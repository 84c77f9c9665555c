"""Names that moved: the old name works for one release, with a warning.

A package or an old module path serves its moved names from a module-level
`__getattr__`, which Python calls only for names the module does not define:

  __getattr__ = _moved.moved(__name__, {
      'tcm_jax.losses.advanced': ('References', 'pair_masks')})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import importlib
from typing import Any
import warnings


def moved(module: str, where: Mapping[str, Sequence[str]], *,
          renamed: Mapping[str, str] | None = None,
          internal: Mapping[str, Sequence[str]] | None = None,
          submodules: Sequence[str] = ()) -> Callable[[str], Any]:
  """A module `__getattr__` for names that moved to other modules.

  Args:
    module: the old module's name.
    where: each new public module's name, with the names that moved there.
    renamed: `{old name: 'new.module.new_name'}` for names that changed.
    internal: each private module's name, with the old names that are no
      longer public: they are served from there, and the warning says they
      are internal instead of pointing at a private module.
    submodules: old submodule paths (`module.<name>`) served, without a
      warning of their own, by importing them; they warn for their names.

  Returns:
    `__getattr__(name)`: the object from its new home, with a
    `DeprecationWarning` naming it; an `AttributeError` for other names.
    Its `new_homes` attribute lists what it serves (for tests), and its
    `internal` attribute the names of `internal`.

  Examples:
    >>> import warnings
    >>> from tcm_jax import _moved
    >>> getattr_ = _moved.moved('old', {'json': ('dumps',)},
    ...                         renamed={'load': 'json.loads'})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...   warnings.simplefilter('always')
    ...   getattr_('load')('[1]')
    [1]
    >>> str(caught[0].message)
    'old.load has moved to json.loads; old will stop providing it in the next release.'
  """
  new = {name: f'{target}.{name}' for target, names in where.items()
         for name in names}
  new.update(renamed or {})
  hidden = {name: f'{target}.{name}'
            for target, names in (internal or {}).items() for name in names}
  submodules = frozenset(submodules)

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    if name in submodules:
      return importlib.import_module(f'{module}.{name}')
    if name in new:
      message = f'has moved to {new[name]}'
      path = new[name]
    elif name in hidden:
      message = 'is internal now, with no public replacement'
      path = hidden[name]
    else:
      raise AttributeError(f'module {module!r} has no attribute {name!r}')
    warnings.warn(
        f'{module}.{name} {message}; {module} will stop providing it in the '
        'next release.', DeprecationWarning, stacklevel=2)
    target, _, attribute = path.rpartition('.')
    return getattr(importlib.import_module(target), attribute)

  __getattr__.new_homes = dict(new)
  __getattr__.internal = dict(hidden)
  return __getattr__


def publish(namespace: dict[str, Any]) -> None:
  """Gives the functions a package exports from its private modules the
  package as their `__module__`.

  Pickles (of an objective's loss, a `functools.partial` of a metric) and
  tracebacks then name the public path, `tcm_jax.losses.tcm_loss`, which
  stays when private modules are reorganised. Classes keep theirs: their
  string annotations are resolved in their own module's namespace.

  Args:
    namespace: the package's `globals()`, with its `__name__` and
      `__all__`.

  Examples:
    >>> import pickle
    >>> from tcm_jax import losses
    >>> losses.tcm_loss.__module__
    'tcm_jax.losses'
    >>> pickle.loads(pickle.dumps(losses.tcm_loss)) is losses.tcm_loss
    True
  """
  for name in namespace['__all__']:
    obj = namespace[name]
    module = getattr(obj, '__module__', None) or ''
    private = module.startswith('tcm_jax.') and module.rpartition(
        '.')[2].startswith('_')
    if private and callable(obj) and not isinstance(obj, type):
      obj.__module__ = namespace['__name__']
