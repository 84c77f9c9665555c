"""What a checkpoint saves to be checked, and the checks (`tcm_jax.checkpoint`).

A step's `checksums` item holds the SHA-256 of each array of the state, keyed
by the leaf's path (`leaf_key`), and of each JSON item (`config`,
`data_state`) under a reserved key (`JSON_KEYS`) that no path can spell.
Orbax and TensorStore do not checksum what they read: without these a
flipped bit would restore without a word.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping
import urllib.parse

import jax
import numpy as np

# Where the JSON items' digests go in the checksums item. Every leaf key
# percent-encodes '#' (and older keys are word characters and '/'), so no
# array's path can spell these.
JSON_KEYS = {'config': '#config', 'data_state': '#data_state'}
_RESERVED = '#'
_WORD = re.compile(r'\w+')


class DamagedCheckpointError(ValueError):
  """A checkpoint read back, but what it holds is not what was saved."""


def _name(entry: Any) -> str:
  """One entry of a pytree path as text: its key, attribute name or index."""
  if isinstance(entry, jax.tree_util.DictKey):
    return str(entry.key)
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  if isinstance(entry, jax.tree_util.SequenceKey):
    return str(entry.idx)
  if isinstance(entry, jax.tree_util.FlattenedIndexKey):
    return str(entry.key)
  return str(entry)


def leaf_key(path: Any) -> str:
  """A leaf's path as its names, e.g. `'params/encoder/head/kernel/value'`.

  The same whether the tree is read onto a target (dataclass fields and
  nnx's `.value` are attributes, tuples have indices) or as Orbax's nested
  dicts (string keys). A name of other than word characters is
  percent-encoded (`/` as `%2F`), so distinct paths give distinct keys.

  Args:
    path: a path of `jax.tree_util.tree_flatten_with_path`.

  Returns:
    The names, `/`-separated.

  Examples:
    >>> import jax
    >>> tree = {'a/b': 1, 'a': {'b': 2}, 'c': (3,)}
    >>> [leaf_key(path) for path, _ in
    ...  jax.tree_util.tree_flatten_with_path(tree)[0]]
    ['a/b', 'a%2Fb', 'c/0']
  """
  return '/'.join(
      name if _WORD.fullmatch(name) else urllib.parse.quote(name, safe='')
      for name in map(_name, path))


def _legacy_leaf_key(path: Any) -> str:
  """The key of checksums saved without the JSON digests: the path's word
  characters (the same as `leaf_key` unless a name has others)."""
  return '/'.join(_WORD.findall(jax.tree_util.keystr(path)))


def _host_value(leaf: Any) -> np.ndarray | None:
  """The leaf as one NumPy array (None: it is spread over other processes)."""
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        return None
      leaf = leaf.addressable_data(0)
  return np.asarray(leaf)


def _digest(value: np.ndarray) -> str:
  digest = hashlib.sha256(f'{value.dtype.str}{value.shape}'.encode())
  # As bytes: a buffer of ml_dtypes' types (bfloat16) cannot be hashed.
  digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
  return digest.hexdigest()


def state_checksums(state: Any) -> dict[str, str]:
  """The SHA-256 of each array of `state` (its dtype, shape and bytes).

  Keyed by the leaf's path (`'params/encoder/...'`). An array sharded over
  several processes, and not replicated, is left out (no process holds it
  whole); the trainer's state is replicated.

  Raises:
    ValueError: two leaves have the same path's names (only a custom pytree
      node can do that), which a checksum could not tell apart.

  Examples:
    >>> import numpy as np
    >>> sums = state_checksums({'w': np.zeros(3, np.float32)})
    >>> sorted(sums), len(sums['w'])
    (['w'], 64)
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    value = _host_value(leaf)
    if value is None:
      continue
    key = leaf_key(path)
    if key in sums:
      raise ValueError(
          'state_checksums expects each leaf at a path of its own; received '
          f'two leaves at {key!r} (the second at '
          f'{jax.tree_util.keystr(path)}).')
    sums[key] = _digest(value)
  return sums


def json_digest(value: Any) -> str:
  """The SHA-256 of `value`'s canonical JSON (sorted keys, no spaces).

  Examples:
    >>> json_digest({'b': 1, 'a': [0.5, None]}) == json_digest(
    ...     {'a': [0.5, None], 'b': 1})
    True
    >>> json_digest({'step': 1}) == json_digest({'step': 2})
    False
  """
  text = json.dumps(value, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()


def item_checksums(state: Any, data_state: Any, config: Any) -> dict[str, str]:
  """A step's checksums item: `state_checksums` and the JSON items' digests.

  Args:
    state: the train state.
    data_state: the `data_state` item as saved (after `json_safe`).
    config: the `config` item as saved (after `json_safe`).

  Examples:
    >>> import numpy as np
    >>> sorted(item_checksums({'w': np.ones(2)}, {'step': 1}, {}))
    ['#config', '#data_state', 'w']
  """
  return {**state_checksums(state),
          JSON_KEYS['config']: json_digest(config),
          JSON_KEYS['data_state']: json_digest(data_state)}


def _as_mapping(checksums: Any) -> Mapping[str, Any]:
  if not isinstance(checksums, Mapping):
    raise DamagedCheckpointError(
        'the checksums item holds a '
        f'{type(checksums).__name__}, not a mapping of paths to SHA-256s')
  return checksums


def _has_json_digests(checksums: Mapping[str, Any]) -> bool:
  return JSON_KEYS['config'] in checksums


def verify_state(state: Any, checksums: Mapping[str, str] | None) -> int:
  """Fails unless every array of `state` matches its checksum and is finite.

  Args:
    state: a restored state.
    checksums: the step's checksums item (`state_checksums` of the state
      that was saved, and digests of its JSON items, which are ignored
      here); None for a checkpoint written before tcm_jax saved them (then
      only the finite check applies).

  Returns:
    How many arrays were checked.

  Raises:
    DamagedCheckpointError: naming the first arrays that differ from what
      was saved, or that hold NaN or infinite values.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.checkpoint import DamagedCheckpointError
    >>> saved = {'w': np.ones(3, np.float32)}
    >>> sums = state_checksums(saved)
    >>> verify_state(saved, sums)
    1
    >>> try:
    ...   verify_state({'w': np.array([1, 1, 1.5], np.float32)}, sums)
    ... except DamagedCheckpointError as error:
    ...   print(error)
    1 of 1 arrays differ from their checksums at save time: w
  """
  arrays, key_of = None, leaf_key
  if checksums is not None:
    checksums = _as_mapping(checksums)
    arrays = {k: v for k, v in checksums.items() if not k.startswith(_RESERVED)}
    if not _has_json_digests(checksums):  # saved before leaf keys escaped
      key_of = _legacy_leaf_key
  differ, non_finite, leaves = [], [], 0
  found = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    value = _host_value(leaf)
    if value is None:
      continue
    key, leaves = key_of(path), leaves + 1
    if arrays is not None:
      found.add(key)
      if arrays.get(key) != _digest(value):
        differ.append(key)
    # (bfloat16's NumPy kind is 'V': jax's issubdtype knows it is a float.)
    if (jax.dtypes.issubdtype(value.dtype, np.inexact)
        and not np.all(np.isfinite(value))):
      non_finite.append(key)
  missing = sorted(set(arrays or ()) - found)
  if differ or missing:
    listed = ', '.join((differ + missing)[:3])
    more = ', ...' if len(differ) + len(missing) > 3 else ''
    raise DamagedCheckpointError(
        f'{len(differ) + len(missing)} of {len(arrays)} arrays differ from '
        f'their checksums at save time: {listed}{more}')
  if non_finite:
    raise DamagedCheckpointError(
        f'{len(non_finite)} of {leaves} arrays hold NaN or infinite values: '
        f'{", ".join(non_finite[:3])}{", ..." if len(non_finite) > 3 else ""}')
  return leaves


def verify_json(item: str, value: Any,
                checksums: Mapping[str, str] | None) -> bool:
  """Fails unless the JSON item `item` read back is the one that was saved.

  Args:
    item: `'config'` or `'data_state'`.
    value: the item as read back.
    checksums: the step's checksums item; None, or one without the JSON
      items' digests (saved before tcm_jax kept them), checks nothing.

  Returns:
    Whether the item was checked.

  Raises:
    DamagedCheckpointError: it differs from its digest at save time.

  Examples:
    >>> sums = item_checksums({}, {'step': 3}, {'lr': 0.1})
    >>> verify_json('data_state', {'step': 3}, sums)
    True
    >>> verify_json('config', {'lr': 0.2}, sums)
    Traceback (most recent call last):
    ...
    tcm_jax._checksums.DamagedCheckpointError: the config item differs from its checksum at save time
  """
  if checksums is None or not _has_json_digests(_as_mapping(checksums)):
    return False
  if checksums.get(JSON_KEYS[item]) != json_digest(value):
    raise DamagedCheckpointError(
        f'the {item} item differs from its checksum at save time')
  return True


def short(error: BaseException) -> str:
  """An error as one short line: its type and its message's first line.

  Examples:
    >>> short(ValueError('bad\\nmore'))
    'ValueError: bad'
  """
  lines = str(error).strip().splitlines()
  first = lines[0] if lines else ''
  if len(first) > 300:
    first = first[:297] + '...'
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def json_safe(obj: Any) -> Any:
  """`obj` as plain JSON values: tuples become lists, arrays Python values.

  Args:
    obj: nested mappings, lists and tuples of `None`, bools, numbers,
      strings, and NumPy or JAX scalars and arrays.

  Returns:
    The same nesting of dicts (string keys), lists and Python scalars.

  Raises:
    TypeError: for any other type, which JSON cannot store.

  Examples:
    >>> import numpy as np
    >>> json_safe({'sizes': (64, 32), 'lr': np.float32(0.5), 'seed': None})
    {'sizes': [64, 32], 'lr': 0.5, 'seed': None}
  """
  if isinstance(obj, Mapping):
    return {str(key): json_safe(value) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(value) for value in obj]
  if hasattr(obj, '__array__'):  # NumPy and JAX scalars and arrays.
    return np.asarray(obj).tolist()
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  raise TypeError(
      f'json_safe expects mappings, lists, tuples, None, bools, numbers, '
      f'strings or arrays; received {type(obj).__name__}: {obj!r}.')
