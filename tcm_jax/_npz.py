"""Reading an evaluation file (`tcm_jax.report.load_npz`): an npz archive,
never unpickled, refused with its name when it is not one."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np


# The first bytes of a zip (with entries, or empty) and of a .npy file.
_ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')
_NPY_MAGIC = b'\x93NUMPY'
# What reading an npz that is cut short or damaged raises, inside numpy.
_DAMAGED = (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError)


def _check_npz_file(path: str, name: str) -> None:
  """A file that is there, readable and starts as an npz archive does."""
  if os.path.isdir(path):
    raise ValueError(f'{name} is a folder, not an npz file.')
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
  except FileNotFoundError:
    raise ValueError(f'{name}: no such file.') from None
  except OSError as e:
    raise ValueError(f'{name} cannot be read ({e.strerror}).') from None
  if not head:
    raise ValueError(f'{name} is empty (0 bytes), not an npz archive.')
  if head.startswith(_NPY_MAGIC):
    raise ValueError(
        f'{name} holds a single .npy array, not an npz archive of named '
        'arrays: save one with np.savez(path, embeddings=z, labels=y).')
  if not head.startswith(_ZIP_MAGIC):
    raise ValueError(
        f'{name} is not an npz archive (a zip of .npy arrays, as np.savez '
        f'writes): it starts with {head!r}.')


def _read_array(data, key: str, name: str) -> np.ndarray:
  try:
    return data[key]
  except ValueError as e:
    if 'pickle' in str(e):  # an object array: loading it would unpickle
      raise ValueError(
          f'{name}: array {key!r} holds Python objects (dtype object), which '
          'are not loaded (unpickling can run code); save numeric arrays.'
      ) from None
    raise ValueError(f'{name} is not a readable npz archive (truncated or '
                     f'damaged: array {key!r}: {e}).') from None
  except _DAMAGED as e:
    raise ValueError(f'{name} is not a readable npz archive (truncated or '
                     f'damaged: array {key!r}: {e}).') from None


def load_npz(path: str, *, name: str | None = None) -> dict[str, np.ndarray]:
  """The arrays of an evaluation file, checked for the keys it needs.

  Never unpickles: a file that is not an npz archive (text, a single
  `.npy` array, an empty or truncated file) or that holds object arrays is
  refused with an error naming it.

  Args:
    path: the npz file.
    name: what the errors call it (default: the path), e.g. the flag that
      gave it.

  Returns:
    Every array of the file by key: `embeddings` and `labels`, and
    `ref_embeddings` with `ref_labels` when there is a gallery.

  Raises:
    ValueError: the file is missing, not an npz archive, damaged, holds
      object arrays, lacks `embeddings` or `labels` (the keys it has are
      listed), or has only one of `ref_embeddings` and `ref_labels`.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from tcm_jax import report
    >>> path = os.path.join(tempfile.mkdtemp(), 'embeddings.npz')
    >>> np.savez(path, embeddings=np.eye(4), labels=np.array([0, 0, 1, 1]))
    >>> sorted(report.load_npz(path))
    ['embeddings', 'labels']
    >>> _ = open(path, 'w').write('0.1, 0.2\\n')
    >>> report.load_npz(path, name='the file')
    Traceback (most recent call last):
    ...
    ValueError: the file is not an npz archive (a zip of .npy arrays, as np.savez writes): it starts with b'0.1, 0.2'.
  """
  path = os.fspath(path)
  name = path if name is None else name
  _check_npz_file(path, name)
  try:
    data = np.load(path, allow_pickle=False)
  except _DAMAGED as e:
    raise ValueError(f'{name} is not a readable npz archive (truncated or '
                     f'damaged: {e}).') from None
  with data:
    arrays = {key: _read_array(data, key, name) for key in data.files}
  missing = {'embeddings', 'labels'} - arrays.keys()
  if missing:
    raise ValueError(
        f'{name} must hold arrays named embeddings and labels; missing '
        f'{sorted(missing)}, found {sorted(arrays)}.')
  if ('ref_embeddings' in arrays) != ('ref_labels' in arrays):
    raise ValueError(f'{name}: ref_embeddings and ref_labels go together; '
                     f'found {sorted(arrays)}.')
  return arrays
