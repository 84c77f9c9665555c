"""The rendered glyph dataset and its cache, for `tcm_jax.data.glyphs`.

`build` renders every requested character in every face (`rasterise`),
keeps one image per distinct bitmap of a character and drops characters
with fewer than `min_faces` of them; `load` reads a render from the cache, or
builds and stores it there (see the `glyphs` module docstring for the layout).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL
from PIL import features

from tcm_jax import _checks
from tcm_jax.data._fonts import CHUNK, FONT_SETS, Face, GlyphFontError
from tcm_jax.data._fonts import abbreviated, check_parameters, face_coverage
from tcm_jax.data._fonts import face_order, render_chunk

_log = logging.getLogger(__name__)

# Bump when the rendering changes what it draws: it is part of every cache key.
# 2: the blank threshold scales with the render size.
RENDER_VERSION = 2
FILES = ('images.npy', 'code_points.npy', 'face_ids.npy')
INLINE_BELOW = 5000  # glyphs: fewer render faster than a worker pool starts


class GlyphCacheError(OSError):
  """A glyph cache directory that cannot be created or written."""


# --- The rendered dataset ------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class GlyphDataset:
  """Rendered glyphs: one image per (character, distinct face).

  Attributes:
    images: uint8 `[n, image_size, image_size]`, white on black.
    code_points: int64 `[n]`, the class (character) of each image.
    face_ids: int32 `[n]`, the index into `faces` of each image's face.
    faces: the faces searched, sorted by `face_order` (sha256, index, path).
    manifest: the render's facts (faces, parameters, counts, dropped
      characters with reasons, file hashes, timing).
    cache_path: the cache directory of this render.
    from_cache: whether this load read the cache instead of rendering.
  """
  images: np.ndarray
  code_points: np.ndarray
  face_ids: np.ndarray
  faces: tuple[Face, ...]
  manifest: dict[str, Any]
  cache_path: str
  from_cache: bool = False

  def describe(self) -> str:
    """A multi-line summary: faces, counts, dropped characters, cache, speed."""
    counts, parameters = self.manifest['counts'], self.manifest['parameters']
    size = parameters['image_size']
    lines = [f'Glyphs: {counts["kept"]:,} characters (classes) in '
             f'{len(self.faces)} faces -> {counts["images"]:,} images of '
             f'{size} x {size} (ink box {round(parameters["ink_fraction"] * size)}'
             f' px; at least {parameters["min_faces"]} distinct faces per '
             'character).', f'Faces ({len(self.faces)}):']
    for i, (face, entry) in enumerate(zip(self.faces, self.manifest['faces'])):
      lines.append(f'  {i:>3} {face.name:<34} {os.path.basename(face.path)}'
                   f'#{face.index}, {face.version.split(";")[0]}: '
                   f'{entry["images"]:,} images ({entry["covered"]:,} covered, '
                   f'{entry["blank"]:,} blank, {entry["duplicates"]:,} duplicates)')
    dropped = self.manifest['dropped']
    lines.append(f'Characters: {counts["requested"]:,} requested, '
                 f'{counts["covered"]:,} covered by a face, {counts["kept"]:,} '
                 f'kept, {len(dropped):,} dropped.')
    for reason in sorted({d['reason'] for d in dropped}):
      group = [d['code_point'] for d in dropped if d['reason'] == reason]
      lines.append(f'  dropped, {reason}: {abbreviated(group, 6)}')
    per_class = np.unique(self.code_points, return_counts=True)[1]
    lines.append(f'Images per character: min {per_class.min()}, median '
                 f'{np.median(per_class):g}, max {per_class.max()}.')
    files = [pathlib.Path(self.cache_path) / name
             for name in (*FILES, 'manifest.json')]
    disk = sum(f.stat().st_size for f in files if f.exists())
    lines.append(f'Cache: {self.cache_path} ({disk / 2**20:.1f} MiB)'
                 f'{", read from the cache" if self.from_cache else ""}.')
    render = self.manifest['render']
    how = {'inline': 'in one process', 'process': f'{render["workers"]} processes',
           'thread': f'{render["workers"]} threads'}[render['executor']]
    lines.append(f'Render: {render["glyphs"]:,} glyphs in {render["seconds"]:.1f}'
                 f' s ({render["glyphs_per_second"]:,.0f} glyphs/s, {how}).')
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
  """What to render: faces, code points, parameters; `key` is its identity.

  Attributes:
    faces: the faces, sorted by `face_order` (sha256, index, path): the
      order of face ids, and of the faces' claims on a shared bitmap.
    code_points: sorted distinct int64.
    fonts: how the fonts were named (for messages).
    parameters: image_size, ink_fraction, min_faces.
  """
  faces: tuple[Face, ...]
  code_points: np.ndarray
  fonts: str
  parameters: dict[str, Any]

  @classmethod
  def make(cls, faces: Sequence[Face], code_points: np.ndarray, fonts: str, *,
           image_size: int, ink_fraction: float, min_faces: int) -> Request:
    """A request with its parameters checked (ValueError)."""
    image_size, ink_fraction = check_parameters(image_size, ink_fraction)
    min_faces = _checks.check_int('min_faces', min_faces, 1)
    return cls(tuple(sorted(faces, key=face_order)),
               np.asarray(code_points, np.int64), fonts,
               {'image_size': image_size, 'ink_fraction': ink_fraction,
                'min_faces': min_faces})

  @property
  def key(self) -> str:
    """sha256 of what draws the bytes: font files (not paths), code, parameters."""
    identity = {'render_version': RENDER_VERSION, **libraries(),
                'faces': [[face.sha256, face.index] for face in self.faces],
                'code_points': self.code_points.tolist(), **self.parameters}
    canonical = json.dumps(identity, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(canonical.encode()).hexdigest()


def libraries() -> dict[str, str]:
  """The versions of Pillow and its FreeType, which change the bitmaps drawn.

  Examples:
    >>> from tcm_jax.data._glyph_cache import libraries
    >>> sorted(libraries())
    ['freetype', 'pillow']
  """
  return {'pillow': PIL.__version__, 'freetype': features.version('freetype2')}


def _can_spawn() -> bool:
  """Whether a spawned process can import `__main__` (not when it is stdin)."""
  main = sys.modules.get('__main__')
  path = getattr(main, '__file__', None)
  return getattr(main, '__spec__', None) is not None or path is None or (
      os.path.isfile(path))


def rasterise(faces: Sequence[Face], code_points: np.ndarray, cover: np.ndarray,
              image_size: int, ink_fraction: float, *, workers: int = 1,
              executor: str = 'process', progress: bool = False
              ) -> tuple[list[dict[int, np.ndarray]], np.ndarray, int]:
  """Renders each face's covered characters, in parallel over chunks of them.

  Args:
    faces: the faces.
    code_points: the characters.
    cover: bool `[len(faces), len(code_points)]`, what to render.
    image_size: as for `render_chunk`.
    ink_fraction: as for `render_chunk`.
    workers: 1 renders here; more use a pool of that many workers, of the
      kind `executor` names: 'process' (spawned, never forked: the caller
      may run JAX's threads) or 'thread'.
    progress: a tqdm bar over the glyphs (on a terminal).

  Returns:
    For each face, {character position: image} of the non-blank renders; the
    bool `[len(faces), len(code_points)]` mask of the blank ones; the workers
    used (1 where a pool could not be used or broke: then what it had not
    rendered is rendered in this process, to the same bytes).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data._glyph_cache import rasterise
    >>> from tcm_jax.data.glyphs import find_faces
    >>> faces = find_faces('dejavu')[:2]
    >>> images, blank, _ = rasterise(faces, np.array([32, 65]),
    ...                              np.ones((2, 2), bool), 16, 0.75)
    >>> sorted(images[0]), blank.tolist()
    ([1], [[True, False], [True, False]])
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  _checks.check_choice('executor', executor, ('process', 'thread'))
  images = [{} for _ in faces]
  blank = np.zeros(cover.shape, bool)
  tasks = []  # ((face, character positions), the arguments of render_chunk)
  for f, face in enumerate(faces):
    covered = np.flatnonzero(cover[f])
    for start in range(0, len(covered), CHUNK):
      rows = covered[start:start + CHUNK]
      tasks.append(((f, rows), (face.path, face.index, code_points[rows].tolist(),
                                image_size, ink_fraction)))
  pool = None
  if workers > 1 and executor == 'thread':
    pool = concurrent.futures.ThreadPoolExecutor(workers)
  elif workers > 1 and _can_spawn():
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn'))
  elif workers > 1:
    _log.warning('Rendering in this process: spawned workers would re-run the '
                 'main program, which was not read from a file (stdin).')
    workers = 1
  pending = set(range(len(tasks)))
  with tqdm.tqdm(total=int(cover.sum()), unit='glyph', desc='rendering glyphs',
                 disable=None if progress else True) as bar:
    def record(t, rendered, empty):
      (f, rows), _ = tasks[t]
      blank[f, rows] = empty
      images[f].update((r, image) for r, image, e in
                       zip(rows.tolist(), rendered, empty) if not e)
      pending.discard(t)
      bar.update(len(rows))
    if pool is not None:
      try:
        futures = {pool.submit(render_chunk, *args): t
                   for t, (_, args) in enumerate(tasks)}
        for future in concurrent.futures.as_completed(futures):
          record(futures[future], *future.result())
      # A worker killed, or unable to start (a script without a __main__ guard
      # re-runs itself in it): the chunks left render here, to the same bytes.
      except concurrent.futures.BrokenExecutor as error:
        _log.warning('A render worker failed (%s); rendering the %d chunks left '
                     'here (a script that renders glyphs at import needs an '
                     "`if __name__ == '__main__':` guard).", error, len(pending))
        workers = 1
      finally:
        pool.shutdown(cancel_futures=True)
    for t in sorted(pending):
      record(t, *render_chunk(*tasks[t][1]))
  return images, blank, workers


def build(request: Request, *, workers: int | None = None,
          executor: str = 'process', progress: bool = False
          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Renders, keeps each character's distinct bitmaps, drops the thin classes.

  Returns:
    The arrays (images, code_points, face_ids), sorted by (code point, face),
    and the manifest (without the file hashes, which `load` adds).

  Raises:
    GlyphFontError: no face covers any of the characters.
    ValueError: fewer than 2 characters left.

  Examples:
    >>> from tcm_jax.data._glyph_cache import Request, build
    >>> from tcm_jax.data.glyphs import find_faces
    >>> request = Request.make(find_faces('dejavu'), [65, 66, 32], 'dejavu',
    ...                        image_size=8, ink_fraction=1.0, min_faces=2)
    >>> arrays, manifest = build(request)
    >>> arrays['images'].shape, manifest['dropped'][0]['reason']
    ((24, 8, 8), 'blank in every face that covers it')
  """
  code_points, faces = request.code_points, request.faces
  cover = np.stack([np.isin(code_points, face_coverage(face)) for face in faces])
  if not cover.any():
    install = FONT_SETS[request.fonts].install if request.fonts in FONT_SETS else ''
    names = ', '.join(face.name for face in faces[:4])
    raise GlyphFontError(
        f'No face covers any of the {len(code_points):,} characters asked for '
        f'({abbreviated(code_points)}); fonts searched: {request.fonts} '
        f'({len(faces)} faces: {names}{", ..." if len(faces) > 4 else ""})'
        + (f'; install the fonts with: {install}' if install else '') + '.')
  total = int(cover.sum())
  cpus = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
          else os.cpu_count() or 1)
  workers = workers or (1 if total < INLINE_BELOW else min(cpus, 8))
  start = time.perf_counter()
  images_of, blank, workers = rasterise(
      faces, code_points, cover, request.parameters['image_size'],
      request.parameters['ink_fraction'], workers=workers, executor=executor,
      progress=progress)
  seconds = time.perf_counter() - start
  kept_images, kept_points, kept_faces, dropped = [], [], [], []
  face_counts = np.zeros((len(faces), 2), np.int64)  # images, duplicates
  min_faces = request.parameters['min_faces']
  for c, code_point in enumerate(code_points.tolist()):
    distinct = {}
    for f in np.flatnonzero(cover[:, c] & ~blank[:, c]):
      image = images_of[f][c]
      if image.tobytes() in distinct:
        face_counts[f, 1] += 1
      else:
        distinct[image.tobytes()] = (int(f), image)
    if not cover[:, c].any():
      reason = 'not covered by any face'
    elif not distinct:
      reason = 'blank in every face that covers it'
    elif len(distinct) < min_faces:
      reason = f'fewer than {min_faces} distinct faces'
    else:
      for f, image in distinct.values():
        kept_images.append(image)
        kept_points.append(code_point)
        kept_faces.append(f)
        face_counts[f, 0] += 1
      continue
    dropped.append({'code_point': code_point, 'reason': reason,
                    'distinct_faces': len(distinct)})
  counts = {'requested': len(code_points), 'covered': int(cover.any(0).sum()),
            'kept': len(code_points) - len(dropped), 'images': len(kept_images)}
  if counts['kept'] < 2:
    reasons = {d['reason'] for d in dropped}
    raise ValueError(
        f'Only {counts["kept"]} of the {counts["requested"]} characters asked '
        f'for are left ({counts["covered"]} covered by the {len(faces)} faces '
        f'of {request.fonts}); a dataset needs at least 2. Dropped: '
        + '; '.join(f'{sum(d["reason"] == r for d in dropped)} {r}'
                    for r in sorted(reasons)) + '.')
  size = request.parameters['image_size']
  arrays = {
      'images': np.stack(kept_images).astype(np.uint8).reshape(-1, size, size),
      'code_points': np.asarray(kept_points, np.int64),
      'face_ids': np.asarray(kept_faces, np.int32)}
  manifest = {
      'format': 'tcm_jax glyphs', 'render_version': RENDER_VERSION,
      'key': request.key, 'parameters': request.parameters,
      'faces': [{'family': face.family, 'style': face.style, 'file': face.path,
                 'index': face.index, 'version': face.version,
                 'sha256': face.sha256, 'covered': int(cover[f].sum()),
                 'blank': int(blank[f].sum()), 'images': int(face_counts[f, 0]),
                 'duplicates': int(face_counts[f, 1])}
                for f, face in enumerate(faces)],
      'counts': counts, 'dropped': dropped,
      'render': {'glyphs': total, 'seconds': round(seconds, 3),
                 'glyphs_per_second': round(total / max(seconds, 1e-9), 1),
                 'workers': workers, 'executor': 'inline' if workers == 1 else executor,
                 **libraries()}}
  return arrays, manifest


# --- The cache --------------------------------------------------------------------------

class _StaleEntry(Exception):
  """A cache entry that must not be used (the message says why)."""


def _cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  if cache_dir:
    return pathlib.Path(cache_dir).expanduser()
  if os.environ.get('TCM_JAX_CACHE'):
    return pathlib.Path(os.environ['TCM_JAX_CACHE']).expanduser()
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
  return pathlib.Path(xdg).expanduser() / 'tcm_jax'


def _cache_error(root: pathlib.Path, error: OSError) -> GlyphCacheError:
  return GlyphCacheError(
      f'Cannot write the glyph cache in {root}: {error.strerror or error}. '
      'Choose another directory with cache_dir=... (--cache_dir, or the glyphs '
      'option cache_dir) or $TCM_JAX_CACHE.')


def _read_entry(path: pathlib.Path, request: Request
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The verified arrays and manifest of a cache entry; _StaleEntry if unfit."""
  try:
    manifest = json.loads((path / 'manifest.json').read_text(encoding='utf-8'))
    if not isinstance(manifest, dict):  # valid JSON, e.g. [] or null
      raise _StaleEntry('its manifest is not a JSON object')
    if manifest.get('key') != request.key:
      raise _StaleEntry('its key is not the request\'s')
    if (manifest.get('parameters') != request.parameters
        or manifest.get('render_version') != RENDER_VERSION):
      raise _StaleEntry('its parameters are not the request\'s')
    arrays = {}
    for name in FILES:
      data = (path / name).read_bytes()
      if hashlib.sha256(data).hexdigest() != manifest['files'][name]:
        raise _StaleEntry(f'{name} does not match its sha256 in the manifest')
      arrays[name[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
    size, n = request.parameters['image_size'], manifest['counts']['images']
    fits = (arrays['images'].shape == (n, size, size)
            and arrays['code_points'].shape == arrays['face_ids'].shape == (n,)
            and np.all((arrays['face_ids'] >= 0)
                       & (arrays['face_ids'] < len(request.faces))))
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise _StaleEntry(f'it is incomplete or unreadable ({error})') from error
  if not fits:
    raise _StaleEntry('its arrays do not fit together')
  return arrays, manifest


def _write_entry(directory: pathlib.Path, arrays: dict[str, np.ndarray],
                 manifest: dict[str, Any]) -> None:
  manifest['files'] = {}
  for name in FILES:
    buffer = io.BytesIO()
    np.save(buffer, arrays[name[:-4]], allow_pickle=False)
    (directory / name).write_bytes(buffer.getvalue())
    manifest['files'][name] = hashlib.sha256(buffer.getvalue()).hexdigest()
  (directory / 'manifest.json').write_text(
      json.dumps(manifest, indent=1, ensure_ascii=False), encoding='utf-8')


# What rename(2) says when the target is there (a directory, or a file).
_TARGET_EXISTS = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def _publish(tmp: pathlib.Path, final: pathlib.Path, request: Request) -> None:
  """Renames a written entry into place; another writer's valid entry wins."""
  root = final.parent.parent
  for _ in range(3):
    try:
      os.rename(tmp, final)
      return
    except OSError as error:  # `final` exists: another writer's, or damaged.
      if error.errno not in _TARGET_EXISTS:  # EACCES, EROFS...: say so.
        raise _cache_error(root, error) from error
    try:
      _read_entry(final, request)
      return
    except _StaleEntry:
      aside = final.with_name(f'.{final.name}.{uuid.uuid4().hex}.old')
      try:
        os.rename(final, aside)
      except FileNotFoundError:  # Another writer moved it first.
        continue
      except OSError as error:
        raise _cache_error(root, error) from error
      if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
      else:  # a file or link where the entry belongs: rmtree would leave it
        aside.unlink(missing_ok=True)
  raise _cache_error(root, OSError(f'could not rename {tmp} to {final}'))


def load(request: Request, cache_dir: str | os.PathLike | None, *,
         progress: bool = False, workers: int | None = None,
         executor: str = 'process') -> GlyphDataset:
  """The request's dataset from the cache, or built and stored there.

  Raises:
    GlyphCacheError: the cache directory cannot be created or written.

  Examples:
    >>> import tempfile
    >>> from tcm_jax.data._glyph_cache import Request, load
    >>> from tcm_jax.data.glyphs import find_faces
    >>> request = Request.make(find_faces('dejavu'), [65, 66], 'dejavu',
    ...                        image_size=8, ink_fraction=1.0, min_faces=2)
    >>> root = tempfile.mkdtemp()
    >>> load(request, root).from_cache, load(request, root).from_cache
    (False, True)
  """
  root = _cache_root(cache_dir)
  final = root / 'glyphs' / request.key[:20]
  if final.exists():
    try:
      arrays, manifest = _read_entry(final, request)
      return GlyphDataset(**arrays, faces=request.faces, manifest=manifest,
                          cache_path=str(final), from_cache=True)
    except _StaleEntry as reason:
      _log.warning('Rebuilding the glyph cache entry %s: %s.', final, reason)
  try:  # Before rendering: an unwritable cache fails at once.
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f'.{final.name}.{uuid.uuid4().hex}.tmp')
    tmp.mkdir()
  except OSError as error:
    raise _cache_error(root, error) from error
  try:
    arrays, manifest = build(request, workers=workers, executor=executor,
                             progress=progress)
    try:
      _write_entry(tmp, arrays, manifest)
    except OSError as error:
      raise _cache_error(root, error) from error
    # Another writer's entry, if it won the rename, holds the same arrays.
    _publish(tmp, final, request)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return GlyphDataset(**arrays, faces=request.faces, manifest=manifest,
                      cache_path=str(final))


