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
          renamed: Mapping[str, str] | None = None) -> Callable[[str], Any]:
  """A module `__getattr__` for names that moved to other modules.

  Args:
    module: the old module's name.
    where: each new module's name, with the names that moved there.
    renamed: `{old name: 'new.module.new_name'}` for names that changed.

  Returns:
    `__getattr__(name)`: the object from its new home, with a
    `DeprecationWarning` naming it; an `AttributeError` for other names.
    Its `new_homes` attribute lists what it serves (for tests).

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

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    if name not in new:
      raise AttributeError(f'module {module!r} has no attribute {name!r}')
    warnings.warn(
        f'{module}.{name} has moved to {new[name]}; {module} will stop '
        'providing it in the next release.', DeprecationWarning,
        stacklevel=2)
    target, _, attribute = new[name].rpartition('.')
    return getattr(importlib.import_module(target), attribute)

  __getattr__.new_homes = dict(new)
  return __getattr__
