"""Font discovery and glyph rendering for `tcm_jax.data.glyphs`.

A font is found by set name, file, directory or family name (`find_faces`);
each face of it is a `Face`, identified by its file's sha256 and its index in
a collection (.ttc). Coverage is read from a face's cmap (`face_coverage`),
and a glyph is drawn with Pillow's FreeType, cropped to its ink and centred
(`render_glyph`; `render_chunk` for many: the unit of work of
`_glyph_cache.rasterise`, which renders many faces in spawned processes).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from tcm_jax import _checks

_log = logging.getLogger(__name__)

FONT_SUFFIXES = ('.ttf', '.otf', '.ttc', '.otc')
SYSTEM_FONT_DIRS = ('/usr/share/fonts', '/usr/local/share/fonts', '~/.fonts',
                    '~/.local/share/fonts')
# Glyphs are drawn this many times larger than the output, then scaled down.
RENDER_SCALE = 4
# A render with fewer half-inked pixels than this, at a render size of
# INK_REFERENCE_SIZE, is blank; the count scales with the render's area (a mark
# of the same shape covers 1/16 of the pixels at a quarter of the size).
MIN_INK_PIXELS = 4
INK_REFERENCE_SIZE = 128
CHUNK = 256  # characters of one face per parallel task


class GlyphFontError(ValueError):
  """A font that cannot be found or read, or faces covering no character asked."""


def _label(code_point: int) -> str:
  character = chr(code_point)
  return f'U+{code_point:04X}' + (f' {character}' if character.isprintable()
                                  and not character.isspace() else '')


def abbreviated(code_points: Sequence[int], limit: int = 8) -> str:
  """The first `limit` code points as `U+XXXX c`, and how many there are.

  Examples:
    >>> from tcm_jax.data._fonts import abbreviated
    >>> abbreviated([65, 32, 0x4E00], limit=2)
    'U+0041 A, U+0020, ... (3 in all)'
  """
  shown = ', '.join(_label(int(c)) for c in code_points[:limit])
  return shown + (f', ... ({len(code_points):,} in all)'
                  if len(code_points) > limit else '')


@dataclasses.dataclass(frozen=True)
class FontSet:
  """Families (exact, case-insensitive), family prefixes, file globs
  (`{matplotlib}`: its data path) and the command that installs them."""
  families: tuple[str, ...] = ()
  prefixes: tuple[str, ...] = ()
  files: tuple[str, ...] = ()
  install: str = ''


_CJK_REGIONS = ('JP', 'KR', 'SC', 'TC', 'HK')
FONT_SETS = {
    'cjk': FontSet(
        families=tuple(f'Noto {kind} CJK {region}'
                       for kind in ('Sans', 'Serif', 'Sans Mono')
                       for region in _CJK_REGIONS),
        prefixes=('KouzanBrushFont',),
        install='apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu'),
    'dejavu': FontSet(files=('{matplotlib}/fonts/ttf/DejaVu*.ttf',)),
}


@dataclasses.dataclass(frozen=True)
class Face:
  """One face of a font file.

  Attributes:
    path: the font file (absolute).
    index: the face's index in its file (a .ttc collection holds several).
    family: the family name from the name table.
    style: the subfamily name, e.g. 'Bold'.
    version: the version string from the name table.
    sha256: the hex sha256 of the font file.
  """
  path: str
  index: int
  family: str
  style: str
  version: str
  sha256: str

  @property
  def name(self) -> str:
    return f'{self.family} {self.style}'.strip()


def _describe(error: Exception) -> str:
  return f'{type(error).__name__}: {error}' if str(error) else type(error).__name__


def check_parameters(image_size: int, ink_fraction: float) -> tuple[int, float]:
  """The render parameters as (int, float); ValueError unless they draw a pixel.

  Examples:
    >>> from tcm_jax.data._fonts import check_parameters
    >>> check_parameters(4, 0.25)  # the smallest: a 1-pixel ink box
    (4, 0.25)
  """
  size = _checks.check_int('image_size', image_size, 4)
  fraction = _checks.check_number('ink_fraction', ink_fraction, above=0,
                                  at_most=1)
  if round(fraction * size) < 1:
    raise ValueError(
        'ink_fraction must leave at least a pixel of ink (round(ink_fraction '
        f'* image_size) >= 1), got {ink_fraction!r} at image_size {size}.')
  return size, fraction


def _sha256(path: str) -> str:
  stat = os.stat(path)
  return _hash_file(path, stat.st_size, stat.st_mtime_ns, stat.st_ino,
                    stat.st_ctime_ns)


@functools.lru_cache(maxsize=256)
def _hash_file(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int
               ) -> str:
  """The file's sha256, once per version of it: a set reads a file often.

  A version is (path, size, mtime, inode, ctime): a same-size rewrite whose
  mtime was restored (a copy keeping times) still changes the ctime, and a
  file replaced by a rename has another inode.
  """
  del size, mtime_ns, inode, ctime_ns  # the cache key only
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _faces_of_file(path: str, keep: Callable[[int, set[str]], bool] | None = None
                   ) -> list[Face]:
  """The faces of a font file that `keep(index, family names)` (lower case) keeps.

  The file is hashed only when a face is kept (a directory scan reads many).
  """
  from fontTools import ttLib  # pylint: disable=g-import-not-at-top
  path = os.path.realpath(path)
  try:
    with open(path, 'rb') as f:
      collection = f.read(4) == b'ttcf'
    count = 1
    if collection:
      # Lazy fonts keep their file open until closed (a scan opens hundreds).
      with ttLib.TTCollection(path, lazy=True) as fonts:
        count = len(fonts.fonts)
    found = []
    for index in range(count):
      with ttLib.TTFont(path, fontNumber=index, lazy=True) as font:
        names = font['name']
        family = names.getBestFamilyName() or os.path.basename(path)
        families = {record.toUnicode(errors='replace').lower()
                    for record in names.names if record.nameID in (1, 16, 21)}
        if keep is None or keep(index, families | {family.lower()}):
          found.append((index, family, names.getBestSubFamilyName() or '',
                        names.getDebugName(5) or ''))
  # fontTools raises whatever a malformed table makes it raise (struct.error,
  # AssertionError, KeyError, TTLibError...): all mean the same to the caller.
  except Exception as error:  # pylint: disable=broad-except
    raise GlyphFontError(
        f'Cannot read the font file {path}: {_describe(error)}') from error
  sha256 = _sha256(path) if found else ''
  return [Face(path, *names, sha256=sha256) for names in found]


def _font_files(directory: str) -> list[str]:
  return sorted(os.path.join(root, name)
                for root, _, names in os.walk(directory) for name in names
                if name.lower().endswith(FONT_SUFFIXES))


@functools.lru_cache(maxsize=1)
def _fc_list() -> tuple[tuple[str, int, tuple[str, ...]], ...] | None:
  """(file, index, lower-case family names) of every face fontconfig knows."""
  if shutil.which('fc-list') is None:
    return None
  try:
    out = subprocess.run(['fc-list', '--format', '%{file}\t%{index}\t%{family}\n'],
                         capture_output=True, text=True, check=True,
                         timeout=60).stdout
  except (OSError, subprocess.SubprocessError) as error:
    _log.warning('fc-list failed (%s); scanning the font directories.', error)
    return None
  entries = []
  for line in out.splitlines():
    path, index, families = (line.split('\t') + ['', ''])[:3]
    if path.lower().endswith(FONT_SUFFIXES) and index.isdigit():
      # Indices above 0xFFFF are named instances of a variable face.
      entries.append((path, int(index) & 0xFFFF,
                      tuple(f.strip().lower() for f in families.split(','))))
  if not entries:
    # A fontconfig without a configuration (or fonts) lists nothing, while the
    # font directories may well hold the fonts.
    _log.debug('fc-list lists no font file; scanning the font directories.')
    return None
  return tuple(entries)


def _family_matches(families: Iterable[str], name: str, prefix: bool) -> bool:
  name = name.lower()
  return any(f.startswith(name) if prefix else f == name for f in families)


def _faces_of_family(name: str, prefix: bool = False) -> tuple[list[Face], str]:
  """The installed faces of a family (or family prefix), and where they were sought."""
  listed = _fc_list()
  if listed is not None:
    wanted = {(os.path.realpath(path), index) for path, index, families in listed
              if _family_matches(families, name, prefix)}
    faces = [face for path in sorted({p for p, _ in wanted})
             for face in _faces_of_file(path, lambda i, _, p=path: (p, i) in wanted)]
    return faces, f'the {len(listed)} faces fontconfig lists (fc-list)'
  directories = [os.path.expanduser(d) for d in SYSTEM_FONT_DIRS]
  faces = []
  for path in (p for d in directories if os.path.isdir(d) for p in _font_files(d)):
    try:
      faces += _faces_of_file(
          path, lambda _, families: _family_matches(families, name, prefix))
    except GlyphFontError as error:
      _log.warning('Skipping an unreadable system font: %s', error)
  return faces, 'the font files under ' + ', '.join(directories)


def _faces_of_set(name: str) -> list[Face]:
  font_set = FONT_SETS[name]
  faces = []
  for pattern in font_set.files:
    import matplotlib  # pylint: disable=g-import-not-at-top
    pattern = pattern.format(matplotlib=matplotlib.get_data_path())
    for path in sorted(glob.glob(pattern)):
      faces += _faces_of_file(path)
  sought, missing = '', []
  for family, prefix in ([(f, False) for f in font_set.families]
                         + [(p, True) for p in font_set.prefixes]):
    found, sought = _faces_of_family(family, prefix)
    if not found:
      missing.append(f'{family}*' if prefix else family)
    faces += found
  if faces and missing:
    # One line for all of them: a command line prints it before its output.
    _log.warning('Font set %r: %d of its %d families are not installed (%s).',
                 name, len(missing), len(font_set.families + font_set.prefixes),
                 ', '.join(missing))
  if not faces:
    install = f' Install them with: {font_set.install}' if font_set.install else ''
    raise GlyphFontError(
        f'No font of the set {name!r} is installed (searched {sought or "its files"}'
        f' for {", ".join(font_set.families + font_set.prefixes + font_set.files)}).'
        f'{install}')
  return faces


def find_faces(fonts: str | Sequence[str]) -> list[Face]:
  """The faces named by a font set, a file, a directory or a family name.

  Args:
    fonts: a key of `FONT_SETS`, a font file (every face of a .ttc), a
      directory (every .ttf/.otf/.ttc/.otc below it), an installed family
      name (looked up with fc-list, else in the system font directories), or a
      comma-separated string or a list mixing these.

  Returns:
    The distinct faces, sorted by `face_order` (sha256, index, path): by what
    they draw, so that the same font files give the same order (and dataset)
    wherever they lie; the path only orders copies of one file.

  Raises:
    GlyphFontError: a font file that cannot be read (named), or a name that
      matches nothing (the message says what was searched).

  Examples:
    >>> from tcm_jax.data.glyphs import find_faces
    >>> faces = find_faces('dejavu')
    >>> sorted(face.name for face in faces)[:2]
    ['DejaVu Sans Bold', 'DejaVu Sans Bold Oblique']
  """
  if isinstance(fonts, str):
    fonts = [fonts] if os.path.exists(fonts) else fonts.split(',')
  faces = {}
  for item in (str(f).strip() for f in fonts):
    if item in FONT_SETS:
      found = _faces_of_set(item)
    elif os.path.isfile(item):
      found = _faces_of_file(item)
    elif os.path.isdir(item):
      found = [face for path in _font_files(item) for face in _faces_of_file(path)]
      if not found:
        raise GlyphFontError(f'The directory {item} holds no '
                             f'{"/".join(FONT_SUFFIXES)} font file.')
    else:
      found, sought = _faces_of_family(item)
      if not found:
        raise GlyphFontError(
            f'No font set, font file, directory or installed family is named '
            f'{item!r}: searched the font sets {sorted(FONT_SETS)}, the path '
            f'{os.path.abspath(item)} (it does not exist) and {sought}.')
    faces.update(((face.path, face.index), face) for face in found)
  if not faces:
    raise GlyphFontError('No fonts were given.')
  return sorted(faces.values(), key=face_order)


def face_order(face: Face) -> tuple[str, int, str]:
  """The sort key of the faces of a dataset: (sha256, index, path).

  Examples:
    >>> from tcm_jax.data._fonts import face_order, find_faces
    >>> face_order(find_faces('dejavu')[0])[1:]
    (0, ...)
  """
  return face.sha256, face.index, face.path


def face_coverage(face: Face) -> np.ndarray:
  """The code points a face's cmap maps to a glyph, sorted int64.

  Examples:
    >>> from tcm_jax.data.glyphs import face_coverage, find_faces
    >>> coverage = face_coverage(find_faces('dejavu')[0])
    >>> bool(ord('A') in coverage), bool(0x4E00 in coverage)
    (True, False)
  """
  from fontTools import ttLib  # pylint: disable=g-import-not-at-top
  try:
    with ttLib.TTFont(face.path, fontNumber=face.index, lazy=True) as font:
      cmap = font.getBestCmap() or {}
  except Exception as error:  # pylint: disable=broad-except  # as in _faces_of_file
    raise GlyphFontError(f'Cannot read the cmap of {face.path} (face '
                         f'{face.index}): {_describe(error)}') from error
  return np.array(sorted(cmap), np.int64)


def _open(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
  # BASIC layout maps a character through the cmap alone, as coverage does.
  try:
    return ImageFont.truetype(path, size, index=index,
                              layout_engine=ImageFont.Layout.BASIC)
  except OSError as error:
    raise GlyphFontError(f'FreeType cannot open {path} (face {index}): '
                         f'{error}') from error


def _min_ink(render_size: int) -> int:
  """Half-inked pixels a render of this size needs not to be blank (>= 1)."""
  return max(1, round(MIN_INK_PIXELS * (render_size / INK_REFERENCE_SIZE) ** 2))


def _draw(font: ImageFont.FreeTypeFont, code_point: int, image_size: int,
          side: int) -> np.ndarray | None:
  character = chr(code_point)
  left, top, right, bottom = font.getbbox(character)
  if right <= left or bottom <= top:
    return None
  canvas = Image.new('L', (right - left, bottom - top))
  ImageDraw.Draw(canvas).text((-left, -top), character, fill=255, font=font)
  ink = np.asarray(canvas)
  if np.count_nonzero(ink >= 128) < _min_ink(font.size):
    return None
  rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
  ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  height, width = ink.shape
  scale = side / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  # reducing_gap: a box pre-reduction, 40% faster and within 1/255 on average.
  glyph = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS,
                                                 reducing_gap=2.0))
  image = np.zeros((image_size, image_size), np.uint8)
  y, x = (image_size - size[1]) // 2, (image_size - size[0]) // 2
  image[y:y + size[1], x:x + size[0]] = glyph
  return image


def render_chunk(path: str, index: int, code_points: Sequence[int],
                 image_size: int, ink_fraction: float
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Renders characters of one face (the unit of work of a render worker).

  Args:
    path: the font file.
    index: the face's index in it.
    code_points: the characters.
    image_size: the side of the square output images.
    ink_fraction: the longer side of a glyph's ink box, as a fraction of
      `image_size`.

  Returns:
    uint8 images `[len(code_points), image_size, image_size]` (white glyphs
    on black; zero where blank) and a bool mask of the blank ones.

  Raises:
    ValueError: an image_size below 4, an ink_fraction outside (0, 1] or one
      that leaves no pixel.

  Examples:
    >>> from tcm_jax.data.glyphs import find_faces, render_chunk
    >>> face = find_faces('dejavu')[0]
    >>> images, blank = render_chunk(face.path, face.index, [65, 32], 16, 0.75)
    >>> images.shape, blank.tolist()
    ((2, 16, 16), [False, True])
  """
  image_size, ink_fraction = check_parameters(image_size, ink_fraction)
  font = _open(path, index, RENDER_SCALE * image_size)
  side = round(ink_fraction * image_size)
  images = np.zeros((len(code_points), image_size, image_size), np.uint8)
  blank = np.zeros(len(code_points), bool)
  for i, code_point in enumerate(code_points):
    image = _draw(font, int(code_point), image_size, side)
    if image is None:
      blank[i] = True
    else:
      images[i] = image
  return images, blank


def render_glyph(face: Face, code_point: int, *, image_size: int = 32,
                 ink_fraction: float = 0.875) -> np.ndarray | None:
  """One character of one face, as the dataset draws it.

  The glyph is drawn white on black at `RENDER_SCALE` times the output size,
  cropped to its ink box, scaled (aspect kept) so that the box's longer side
  is `round(ink_fraction * image_size)`, and centred.

  Returns:
    uint8 `[image_size, image_size]`, or None where the face draws no ink
    (fewer than `MIN_INK_PIXELS` half-inked pixels at a render size of
    `INK_REFERENCE_SIZE`, scaled with the render's area; at least 1).

  Raises:
    ValueError: bad parameters, as for `render_chunk`.

  Examples:
    >>> from tcm_jax.data.glyphs import find_faces, render_glyph
    >>> face = find_faces('dejavu')[0]
    >>> render_glyph(face, ord('A'), image_size=16).shape
    (16, 16)
    >>> render_glyph(face, ord(' ')) is None
    True
  """
  images, blank = render_chunk(face.path, face.index, [code_point], image_size,
                               ink_fraction)
  return None if blank[0] else images[0]
