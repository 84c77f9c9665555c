r"""An offline, many-class open-world dataset of rendered glyphs.

A class is a character and a sample is a typeface drawing it: by default the
2,965 level-1 kanji of JIS X 0208 in every installed face of Noto Sans/Serif/
Sans Mono CJK (JP, KR, SC, TC, HK; regular and bold) and the Kouzan brush
fonts (`apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu`). Each glyph is
cropped to its ink and centred (`render_glyph`); a face that draws the same
bitmap as an earlier face for a character counts once for it, and a character
left with fewer than `min_faces` distinct images is dropped (the manifest says
which and why).

Classes are split by `split_classes`, a pure function of the code point, into
train / val / test; `pretrain` is a second, disjoint character set (level-2
kanji by default). `load_split('glyphs', side, glyphs={...})` reads a side;
`dataset_facts` describes the dataset, its faces and its sides for a report.

Cache: a render is stored in `<cache_dir>/glyphs/<key[:20]>/` (`images.npy`,
`code_points.npy`, `face_ids.npy`, `manifest.json`), where the key is the
sha256 of the render-code, Pillow and FreeType versions, each face's file
hash and index (faces ordered by these, not by path: the same font files
anywhere give the same key and bytes), the code points and the parameters.
`cache_dir` defaults to `$TCM_JAX_CACHE`, else `$XDG_CACHE_HOME/tcm_jax`,
else `~/.cache/tcm_jax`. An entry is verified (file hashes, parameters) on
every read and rebuilt when damaged or stale.

  python -m tcm_jax.data.glyphs [--characters jis_level1] [--fonts cjk] \
      [--image_size 32] [--min_faces 2] [--cache_dir DIR] \
      [--figure docs/glyphs.png] [--figure_characters 8]
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tcm_jax.data import datasets
from tcm_jax.data._fonts import FONT_SETS, Face, GlyphFontError, abbreviated
from tcm_jax.data._fonts import face_coverage, find_faces, render_chunk
from tcm_jax.data._fonts import render_glyph
from tcm_jax.data._glyph_cache import FILES, GlyphCacheError, GlyphDataset
from tcm_jax.data._glyph_cache import Request, load, rasterise

__all__ = [
    'CHARACTER_SETS', 'FILES', 'FONT_SETS', 'GLYPH_OPTIONS', 'Face',
    'GlyphCacheError', 'GlyphDataset', 'GlyphFontError', 'dataset_facts',
    'face_coverage', 'find_faces', 'load_glyph_split', 'main',
    'parse_characters', 'rasterise', 'render_chunk', 'render_dataset',
    'render_glyph', 'split_classes',
]


def _jis_kanji(first_row: int, last_row: int) -> np.ndarray:
  """The JIS X 0208 characters of rows (ku) first..last, through EUC-JP."""
  found = []
  for ku in range(first_row, last_row + 1):
    for ten in range(1, 95):
      try:
        found.append(ord(bytes([0xA0 + ku, 0xA0 + ten]).decode('euc_jp')))
      except UnicodeDecodeError:  # an unassigned cell
        pass
  return np.array(found, np.int64)


def _frozen(values) -> np.ndarray:
  array = np.unique(np.asarray(values, np.int64))
  array.setflags(write=False)
  return array


CHARACTER_SETS = {
    'jis_level1': _frozen(_jis_kanji(16, 47)),
    'jis_level2': _frozen(_jis_kanji(48, 84)),
    'hangul': _frozen(range(0xAC00, 0xD7A4)),
    'latin': _frozen([*range(ord('A'), ord('Z') + 1), *range(ord('a'), ord('z') + 1)]),
    'greek': _frozen([*range(0x0391, 0x03A2), *range(0x03A3, 0x03AA),
                      *range(0x03B1, 0x03CA)]),
    'cyrillic': _frozen(range(0x0410, 0x0450)),
}
_CODE_POINT = re.compile(r'U\+([0-9A-F]{1,6})(?:-U\+([0-9A-F]{1,6}))?', re.I)


def _check_code_point(value: int, source: Any) -> int:
  if not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
    raise ValueError(f'{source!r} is not a character code point (0 to U+10FFFF, '
                     f'surrogates excluded).')
  return value


def parse_characters(spec: str | Sequence[int]) -> np.ndarray:
  """The code points named by a character spec.

  Args:
    spec: code points (ints), or a string: comma-separated items, each a key
      of `CHARACTER_SETS`, `U+XXXX` or a range `U+XXXX-U+YYYY` (inclusive).
      A string none of whose items is a set name or starts with `U+` is the
      characters themselves (whitespace ignored).

  Returns:
    The sorted distinct code points, int64.

  Raises:
    ValueError: an empty result, a reversed range, a bad code point or item.

  Examples:
    >>> from tcm_jax.data.glyphs import parse_characters
    >>> parse_characters('U+0041-U+0043,greek')[:5].tolist()
    [65, 66, 67, 913, 914]
    >>> parse_characters('b a b').tolist()
    [97, 98]
  """
  if isinstance(spec, str):
    items = [item.strip() for item in spec.split(',')]
    if not any(item in CHARACTER_SETS or item.upper().startswith('U+')
               for item in items):
      # A misspelt set name would otherwise render its letters.
      near = difflib.get_close_matches(spec.strip(), CHARACTER_SETS, n=1)
      if near:
        raise ValueError(f'Unknown character set {spec.strip()!r}; did you mean '
                         f'{near[0]!r}? (Literal characters: pass code points.)')
      values = [ord(c) for c in spec if not c.isspace()]
    else:
      values = []
      for item in items:
        match = _CODE_POINT.fullmatch(item)
        if item in CHARACTER_SETS:
          values += CHARACTER_SETS[item].tolist()
        elif match is None:
          raise ValueError(
              f'Bad character item {item!r} in {spec!r}: expected a set '
              f'({", ".join(CHARACTER_SETS)}), U+XXXX or U+XXXX-U+YYYY.')
        else:
          lo = _check_code_point(int(match[1], 16), item)
          hi = _check_code_point(int(match[2] or match[1], 16), item)
          if hi < lo:
            raise ValueError(f'The range {item!r} is reversed.')
          values += range(lo, hi + 1)
  else:
    values = []
    for value in spec:
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f'Code points must be ints, got {value!r}.')
      values.append(_check_code_point(int(value), value))
  if not values:
    raise ValueError(f'The character spec {spec!r} names no characters.')
  return np.unique(np.asarray(values, np.int64))


def render_dataset(characters: str | Sequence[int] = 'jis_level1',
                   fonts: str | Sequence[str] = 'cjk', *, image_size: int = 32,
                   ink_fraction: float = 0.875, min_faces: int = 2,
                   cache_dir: str | os.PathLike | None = None,
                   progress: bool = True, workers: int | None = None,
                   executor: str = 'process') -> GlyphDataset:
  """Renders every character in every face, or reads the render from the cache.

  Args:
    characters: a `parse_characters` spec.
    fonts: a `find_faces` spec.
    image_size: the side of the square images.
    ink_fraction: the longer side of each glyph's ink box, as a fraction of
      `image_size`.
    min_faces: characters with fewer distinct images are dropped.
    cache_dir: the cache root (default: see the module docstring).
    progress: show a progress bar (on a terminal).
    workers: parallel renderers (default: 1 for small jobs, else the CPUs).
    executor: 'process' (spawned processes) or 'thread'. Pillow holds the
      GIL while it rasterises, so threads do not render faster.

  Returns:
    A `GlyphDataset`, images sorted by (code point, face).

  Raises:
    GlyphFontError: unreadable fonts, or none covering any character asked.
    GlyphCacheError: a cache directory that cannot be written.
    ValueError: bad parameters, or fewer than 2 characters left.

  Examples:
    >>> import tempfile
    >>> from tcm_jax.data.glyphs import render_dataset
    >>> data = render_dataset('latin', 'dejavu', image_size=16,
    ...                       cache_dir=tempfile.mkdtemp(), progress=False)
    >>> data.images.shape[1:], len(set(data.code_points.tolist()))
    ((16, 16), 52)
  """
  return load(_request(characters, fonts, image_size, ink_fraction, min_faces),
              cache_dir, progress=progress, workers=workers, executor=executor)


def _request(characters, fonts, image_size, ink_fraction, min_faces) -> Request:
  code_points = parse_characters(characters)
  label = fonts if isinstance(fonts, str) else ','.join(map(str, fonts))
  return Request.make(find_faces(fonts), code_points, label,
                      image_size=image_size, ink_fraction=ink_fraction,
                      min_faces=min_faces)


# --- Open-world splits -----------------------------------------------------------------

def split_classes(code_points: Sequence[int], *, test_fraction: float = 0.5,
                  val_fraction: float = 0.1, salt: str = 'tcm_jax-glyphs'
                  ) -> np.ndarray:
  """The side ('train', 'val' or 'test') of each class, from its code point alone.

  u = the first 8 bytes (big-endian) of sha256(f'{salt}:{code_point}'), over
  2**64; 'test' if u < test_fraction, 'val' if u < test_fraction +
  val_fraction, else 'train'. Adding characters never moves others.

  Raises:
    ValueError: fractions outside [0, 1] or summing to more than 1.

  Examples:
    >>> from tcm_jax.data.glyphs import split_classes
    >>> split_classes([65, 66, 67], test_fraction=0.0, val_fraction=0.0).tolist()
    ['train', 'train', 'train']
  """
  for name, value in (('test_fraction', test_fraction), ('val_fraction', val_fraction)):
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
        or not 0 <= value <= 1):
      raise ValueError(f'{name} must be in [0, 1], got {value!r}.')
  if test_fraction + val_fraction > 1:
    raise ValueError(f'test_fraction + val_fraction must be at most 1, got '
                     f'{test_fraction} + {val_fraction}.')
  u = np.array([int.from_bytes(hashlib.sha256(f'{salt}:{int(c)}'.encode())
                               .digest()[:8], 'big') / 2**64
                for c in code_points], np.float64)
  return np.where(u < test_fraction, 'test',
                  np.where(u < test_fraction + val_fraction, 'val', 'train'))


GLYPH_OPTIONS = {'characters': 'jis_level1', 'fonts': 'cjk', 'image_size': 32,
                 'ink_fraction': 0.875, 'min_faces': 2, 'cache_dir': '',
                 'test_fraction': 0.5, 'val_fraction': 0.1,
                 'pretrain_characters': None}
_RENDERED: dict[tuple[str, str], GlyphDataset] = {}


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
  unknown = sorted(set(options or {}) - set(GLYPH_OPTIONS))
  if unknown:
    raise ValueError(f'Unknown glyphs option(s) {unknown}; the options are '
                     f'{sorted(GLYPH_OPTIONS)}.')
  resolved = {**GLYPH_OPTIONS, **(options or {})}
  if resolved['pretrain_characters'] is None:
    characters = resolved['characters']  # an array has no single truth value
    resolved['pretrain_characters'] = (
        'jis_level2' if isinstance(characters, str)
        and characters == 'jis_level1' else '')
  return resolved


def _has_pretrain(options: dict[str, Any]) -> bool:
  """Whether pretrain_characters names any (a string, or code points)."""
  value = options['pretrain_characters']
  return bool(value.strip()) if isinstance(value, str) else len(value) > 0


def _rendered(options: dict[str, Any], characters) -> GlyphDataset:
  """The dataset of `characters` under `options`, rendered once per process."""
  request = _request(characters, options['fonts'], options['image_size'],
                     options['ink_fraction'], options['min_faces'])
  memo = (request.key, str(options['cache_dir']))
  if memo not in _RENDERED:
    _RENDERED[memo] = load(request, options['cache_dir'] or None, progress=True)
  return _RENDERED[memo]


def _sides(options: dict[str, Any], pretrain: bool
           ) -> dict[str, tuple[GlyphDataset, np.ndarray]]:
  """Each side's dataset and its mask over that dataset's images.

  The pretrain set is rendered (and checked) only when asked for.
  """
  data = _rendered(options, options['characters'])
  side_of = split_classes(data.code_points, test_fraction=options['test_fraction'],
                          val_fraction=options['val_fraction'])
  sides = {side: (data, side_of == side) for side in ('train', 'val', 'test')}
  if pretrain and _has_pretrain(options):
    pretrain = _rendered(options, options['pretrain_characters'])
    shared = np.intersect1d(pretrain.code_points, data.code_points)
    if shared.size:
      raise ValueError(
          f'pretrain_characters and characters share {shared.size:,} characters '
          f'({abbreviated(shared, 4)}); the pretrain side must be disjoint.')
    sides['pretrain'] = (pretrain, np.ones(len(pretrain.code_points), bool))
  return sides


def load_glyph_split(side: str, **options) -> datasets.Split:
  """One side ('train', 'val', 'test' or 'pretrain') of the glyph dataset.

  Args:
    side: 'train', 'val' and 'test' split the classes of `characters` with
      `split_classes`; 'pretrain' holds every class of `pretrain_characters`.
    **options: any of `GLYPH_OPTIONS` (the defaults): `characters`, `fonts`,
      `image_size`, `ink_fraction`, `min_faces`, `cache_dir` ('' = default),
      `test_fraction`, `val_fraction`, `pretrain_characters` ('jis_level2' when
      `characters` is 'jis_level1', else '': no pretrain side).

  Returns:
    A `Split` whose labels are code points and images uint8 `[s, s, 1]`.

  Raises:
    ValueError: an unknown option, an empty or absent side, overlapping sets.

  Examples:
    >>> import tempfile
    >>> from tcm_jax.data.glyphs import load_glyph_split
    >>> test = load_glyph_split('test', characters='latin', fonts='dejavu',
    ...                         image_size=16, cache_dir=tempfile.mkdtemp())
    >>> test.name, test.image(0).shape, bool(set(test.labels) <= set(range(65, 123)))
    ('glyphs/test', (16, 16, 1), True)
  """
  options = _options(options)
  if side not in ('train', 'val', 'test', 'pretrain'):
    raise ValueError(f"Unknown glyphs side {side!r}; expected 'train', 'val', "
                     "'test' or 'pretrain'.")
  if side == 'pretrain' and not _has_pretrain(options):
    raise ValueError(
        f"The glyphs dataset of characters={options['characters']!r} has no "
        "pretrain side: set the glyphs option pretrain_characters (e.g. "
        "'jis_level2').")
  data, keep = _sides(options, pretrain=side == 'pretrain')[side]
  if not keep.any():
    raise ValueError(f'The glyphs side {side!r} has no classes: raise its '
                     'fraction or render more characters.')
  records = datasets._ArrayRecords(data.images, data.code_points)  # pylint: disable=protected-access
  return datasets._split_by_class('glyphs', side, records, data.code_points,  # pylint: disable=protected-access
                                  keep)


def dataset_facts(options: Mapping[str, Any] | None = None, *,
                  pretrain: bool = True) -> str:
  """The glyph dataset described for a report: faces, counts, sides, cache.

  Args:
    options: the glyphs options (as for `load_split('glyphs', ...,
      glyphs=options)`).
    pretrain: whether to describe (and so render) the pretrain side too.

  Examples:
    >>> import tempfile
    >>> from tcm_jax.data.glyphs import dataset_facts
    >>> print(dataset_facts({'characters': 'greek', 'fonts': 'dejavu',
    ...                      'image_size': 16, 'cache_dir': tempfile.mkdtemp()}))
    Glyphs: 49 characters (classes) in ... faces -> ...
    Sides (split_classes: test 0.5, val 0.1 of the classes):
      train: ... classes, ... images
      val: ...
  """
  options = _options(options)
  sides = _sides(options, pretrain=pretrain)
  lines = [sides['train'][0].describe(),
           f"Sides (split_classes: test {options['test_fraction']:g}, val "
           f"{options['val_fraction']:g} of the classes):"]
  named = options['pretrain_characters']
  if not isinstance(named, str):
    named = f'{len(named):,} code points'
  for side, (data, keep) in sides.items():
    lines.append(f'  {side}: {len(np.unique(data.code_points[keep])):,} classes, '
                 f'{int(keep.sum()):,} images'
                 + (f" ({named}; "
                    f"{len(data.manifest['dropped']):,} of "
                    f"{data.manifest['counts']['requested']:,} requested "
                    "characters dropped)" if side == 'pretrain' else ''))
  return '\n'.join(lines)


# --- Command line ------------------------------------------------------------------------

def _short_name(face: Face) -> str:
  """A column label: the face's name without the words most faces share."""
  words = face.name.replace('KouzanBrushFont', 'Kouzan ').split()
  shared = ('Noto', 'CJK', 'DejaVu', 'Regular', 'Book')
  return ' '.join(w for w in words if w not in shared) or face.name


def _write_figure(data: GlyphDataset, code_points: np.ndarray, path: str) -> None:
  """Rows: characters; columns: the faces with a distinct image of any."""
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  columns = sorted(set(data.face_ids[np.isin(data.code_points, code_points)].tolist()))
  labels = [_short_name(data.faces[f]) for f in columns]
  # Inches: an image; the title; the rotated column labels (6 pt: ~0.055 a letter).
  cell, title, header = 0.42, 0.35, 0.1 + 0.065 * max(map(len, labels))
  width = max(0.6 + cell * len(columns), 4.0)
  height = title + header + 0.1 + cell * len(code_points)
  fig = figure_lib.Figure(figsize=(width, height))
  axes = fig.subplots(len(code_points), len(columns), squeeze=False)
  size = data.images.shape[1]
  for r, code_point in enumerate(code_points.tolist()):
    for c, face_id in enumerate(columns):
      ax = axes[r, c]
      found = np.flatnonzero((data.code_points == code_point)
                             & (data.face_ids == face_id))
      image = data.images[found[0]] if found.size else np.full((size, size), 96)
      ax.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(labels[c], rotation=90, fontsize=6)
      if c == 0:
        ax.set_ylabel(f'U+{code_point:04X}', fontsize=6)
  fig.suptitle('Test-side characters (rows) by face (columns)\ngrey: no distinct '
               'image (as an earlier face, blank or not covered)', fontsize=7,
               y=1 - 0.05 / height, va='top')
  fig.subplots_adjust(left=0.5 / width, right=1 - 0.1 / width,
                      bottom=0.1 / height, top=1 - (title + header) / height,
                      wspace=0.05, hspace=0.05)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150)


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message}\n')  # one line, no usage dump


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
  return int(text)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line: prints the dataset's facts; `--figure` draws samples.

  Examples:
    >>> import tempfile
    >>> from tcm_jax.data.glyphs import main
    >>> main(['--characters', 'latin', '--fonts', 'dejavu', '--image_size', '8',
    ...       '--cache_dir', tempfile.mkdtemp()])
    Glyphs: 52 characters (classes) in ... faces -> ...
      test: ... classes, ... images
  """
  parser = _Parser(prog='python -m tcm_jax.data.glyphs',
                   description=__doc__.splitlines()[0])
  parser.add_argument('--characters', default='jis_level1',
                      help='sets (' + ', '.join(CHARACTER_SETS) + '), U+XXXX, '
                      'U+XXXX-U+YYYY, comma-separated; or the characters')
  parser.add_argument('--fonts', default='cjk', help='font sets (' + ', '.join(
      FONT_SETS) + '), files, directories or family names, comma-separated')
  parser.add_argument('--pretrain_characters', default=None,
                      help="the pretrain side's characters ('' for none)")
  parser.add_argument('--image_size', type=_positive, default=32)
  parser.add_argument('--ink_fraction', type=float, default=0.875)
  parser.add_argument('--min_faces', type=_positive, default=2)
  parser.add_argument('--cache_dir', default='', help='default: $TCM_JAX_CACHE, '
                      '$XDG_CACHE_HOME/tcm_jax or ~/.cache/tcm_jax')
  parser.add_argument('--figure', default='', help='a PNG of sample glyphs')
  parser.add_argument('--figure_characters', type=_positive, default=8,
                      help='rows (test-side characters) of the figure')
  args = parser.parse_args(argv)
  options = {name: getattr(args, name) for name in (
      'characters', 'fonts', 'pretrain_characters', 'image_size', 'ink_fraction',
      'min_faces', 'cache_dir')}
  try:
    print(dataset_facts(options))
    if args.figure:
      data, keep = _sides(_options(options), pretrain=False)['test']
      shown = np.unique(data.code_points[keep]) if keep.any() else np.unique(
          data.code_points)
      picks = np.linspace(0, len(shown) - 1, min(args.figure_characters, len(shown)))
      _write_figure(data, shown[np.unique(picks.round().astype(int))], args.figure)
      print(f'Figure: {args.figure}')
  except (ValueError, OSError) as error:  # the messages say what to do
    sys.exit(f'{parser.prog}: error: {error}')
  # Anything else (a failing library, a bug) is still one line and an exit
  # status; a traceback says nothing more to whoever runs the command.
  except Exception as error:  # pylint: disable=broad-except
    sys.exit(f'{parser.prog}: error: {type(error).__name__}: {error}')


if __name__ == '__main__':
  main()
