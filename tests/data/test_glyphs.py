"""Glyphs: character sets, fonts, rendering, the command."""
# pylint: disable=protected-access  # the tests read the private helpers

import gc
import glob
import hashlib
import logging
import os
import re
import shutil
import string
import subprocess
import sys
import time
import unicodedata
import warnings

import matplotlib
import numpy as np
import pytest

from tcm_jax.data import _fonts
from tcm_jax.data import glyphs

NOTO_CJK = '/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc'
CLI = [sys.executable, '-m', 'tcm_jax.data.glyphs']
# The faces of the 'dejavu' set: as many as this matplotlib ships.
DEJAVU_FACES = len(glob.glob(os.path.join(matplotlib.get_data_path(), 'fonts',
                                          'ttf', 'DejaVu*.ttf')))


@pytest.fixture(scope='module')
def dejavu():
  """The bundled DejaVu faces by file name."""
  return {os.path.basename(face.path): face for face in glyphs.find_faces('dejavu')}


def _render(cache_dir, characters='latin', fonts='dejavu', **kwargs):
  kwargs = {'image_size': 12, 'progress': False, **kwargs}
  return glyphs.render_dataset(characters, fonts, cache_dir=cache_dir, **kwargs)


# --- Characters ---------------------------------------------------------------------

def _jis_rows_via_iso2022(rows):
  """JIS X 0208 cells of `rows` decoded as ISO-2022-JP, not EUC-JP."""
  found = []
  for ku in rows:
    for ten in range(1, 95):
      try:
        found.append((b'\x1b$B' + bytes([0x20 + ku, 0x20 + ten]) + b'\x1b(B')
                     .decode('iso2022_jp'))
      except UnicodeDecodeError:
        pass
  return np.unique([ord(c) for c in found])


def test_jis_levels_match_an_independent_derivation():
  level1 = _jis_rows_via_iso2022(range(16, 48))
  level2 = _jis_rows_via_iso2022(range(48, 85))
  assert (len(level1), len(level2)) == (2965, 3390)  # the standard's counts
  np.testing.assert_array_equal(glyphs.CHARACTER_SETS['jis_level1'], level1)
  np.testing.assert_array_equal(glyphs.CHARACTER_SETS['jis_level2'], level2)
  for code_point in np.concatenate([level1, level2]):
    assert unicodedata.name(chr(code_point)).startswith('CJK UNIFIED IDEOGRAPH')


def test_jis_levels_match_the_standards_table():
  # Both derivations above read CPython's one JIS table: fixed values too.
  jis = glyphs._jis_kanji  # in JIS order, not sorted
  level1, level2 = (set(glyphs.CHARACTER_SETS[f'jis_level{i}'].tolist())
                    for i in (1, 2))
  assert (jis(16, 16)[0], jis(47, 47)[-1]) == (0x4E9C, 0x8155)  # 亜 16-01, 腕 47-51
  assert {0x4E9C, 0x8155} <= level1 and not {0x4E9C, 0x8155} & level2
  assert jis(48, 48)[0] == 0x5F0C and 0x5F0C in level2  # 弌 48-01
  assert ''.join(map(chr, jis(84, 84))) == '堯槇遙瑤凜熙'  # row 84: 6 cells
  assert {ord(c) for c in '堯槇遙瑤凜熙'} <= level2


def test_alphabets_are_the_plain_letters():
  sets = glyphs.CHARACTER_SETS
  assert ''.join(map(chr, sets['latin'])) == ''.join(sorted(string.ascii_letters))
  russian = 'АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ'
  assert ''.join(map(chr, sets['cyrillic'])) == russian + russian.lower()
  greek = [c for c in range(0x0391, 0x03CA)
           if re.fullmatch(r'GREEK (CAPITAL|SMALL) LETTER [A-Z ]+',
                           unicodedata.name(chr(c), '')) and 'WITH' not in
           unicodedata.name(chr(c))]
  assert sets['greek'].tolist() == greek
  hangul = sets['hangul']
  assert len(hangul) == 11172 and all(
      unicodedata.name(chr(c)).startswith('HANGUL SYLLABLE') for c in hangul[::97])


def test_parse_characters_grammar():
  parse = lambda spec: glyphs.parse_characters(spec).tolist()
  assert parse('U+0041') == [65]
  assert parse(' u+0043-U+0045 , U+0041 ') == [65, 67, 68, 69]
  assert parse('greek,U+0041,greek') == [65] + glyphs.CHARACTER_SETS['greek'].tolist()
  assert parse('ba\n b') == [97, 98]  # literal characters, whitespace ignored
  assert parse('a,b') == [44, 97, 98]  # no set or U+ item: literal, comma too
  assert parse([3, 1, 3]) == [1, 3]
  assert parse(np.array([0x4E00, 65])) == [65, 0x4E00]
  assert glyphs.parse_characters('latin').dtype == np.int64


@pytest.mark.parametrize('spec, message', [
    ('', 'names no characters'),
    (' \n', 'names no characters'),
    ([], 'names no characters'),
    ('U+0043-U+0041', r"range 'U\+0043-U\+0041' is reversed"),
    ('U+110000', 'not a character code point'),
    ('U+D800', 'surrogates excluded'),
    ([-1], 'not a character code point'),
    ([65, 1.5], 'Code points must be ints, got 1.5'),
    ('latin,klingon', r"Bad character item 'klingon'.*jis_level1"),
    ('U+ZZZZ', r"Bad character item 'U\+ZZZZ'"),
    ('jis_levl1', r"Unknown character set 'jis_levl1'; did you mean 'jis_level1'"),
    ('Latin', r"did you mean 'latin'"),
])
def test_parse_characters_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    glyphs.parse_characters(spec)


# --- Fonts ------------------------------------------------------------------------------

def test_find_faces_sorts_merges_and_names(dejavu, tmp_path):
  faces = glyphs.find_faces('dejavu')
  assert len(faces) == DEJAVU_FACES
  assert [_fonts.face_order(f) for f in faces] == sorted(map(_fonts.face_order, faces))
  sans = dejavu['DejaVuSans.ttf']
  with open(sans.path, 'rb') as f:
    assert sans.sha256 == hashlib.sha256(f.read()).hexdigest()
  assert sans.family == 'DejaVu Sans' and sans.name.startswith('DejaVu Sans ')
  assert sans.version.startswith('Version')
  # A file, a directory and a set together, each face once.
  (tmp_path / 'sub').mkdir()
  shutil.copy(sans.path, tmp_path / 'sub' / 'copy.ttf')
  mixed = glyphs.find_faces(f'{sans.path},{tmp_path},dejavu')
  assert len(mixed) == len(faces) + 1
  copies = [f.path for f in mixed if f.sha256 == sans.sha256]  # adjacent, by path
  assert copies == sorted([sans.path, str(tmp_path / 'sub' / 'copy.ttf')])
  assert mixed[mixed.index(sans) + (1 if copies[0] == sans.path else -1)].path in copies


def test_family_lookup_without_fc_list(dejavu, tmp_path, monkeypatch, caplog):
  shutil.copy(dejavu['DejaVuSerif.ttf'].path, tmp_path / 'serif.ttf')
  (tmp_path / 'broken.ttf').write_bytes(b'not a font' * 10)
  monkeypatch.setattr(_fonts, 'SYSTEM_FONT_DIRS', (str(tmp_path),))
  monkeypatch.setattr(_fonts.shutil, 'which', lambda name: None)
  _fonts._fc_list.cache_clear()
  try:
    with caplog.at_level(logging.WARNING):
      faces = glyphs.find_faces('dejavu serif')
    assert [f.path for f in faces] == [str(tmp_path / 'serif.ttf')]
    assert 'broken.ttf' in caplog.text  # skipped with a warning, not fatal
    with pytest.raises(glyphs.GlyphFontError,
                       match=rf"named 'Nope Sans'.*font files under {tmp_path}"):
      glyphs.find_faces('Nope Sans')
  finally:
    _fonts._fc_list.cache_clear()


def test_empty_fc_list_falls_back_to_the_font_directories(dejavu, tmp_path,
                                                          monkeypatch):
  shutil.copy(dejavu['DejaVuSerif.ttf'].path, tmp_path / 'serif.ttf')
  monkeypatch.setattr(_fonts, 'SYSTEM_FONT_DIRS', (str(tmp_path),))
  monkeypatch.setattr(_fonts.shutil, 'which', lambda name: '/usr/bin/' + name)
  monkeypatch.setattr(_fonts.subprocess, 'run', lambda args, **kwargs: (
      subprocess.CompletedProcess(args, 0, stdout='', stderr='')))
  _fonts._fc_list.cache_clear()
  try:
    faces = glyphs.find_faces('DejaVu Serif')  # fontconfig without a config
    assert [f.path for f in faces] == [str(tmp_path / 'serif.ttf')]
  finally:
    _fonts._fc_list.cache_clear()


def test_missing_families_of_a_set_are_one_line(dejavu, tmp_path, monkeypatch,
                                                caplog):
  shutil.copy(dejavu['DejaVuSerif.ttf'].path, tmp_path / 'serif.ttf')
  monkeypatch.setattr(_fonts, 'SYSTEM_FONT_DIRS', (str(tmp_path),))
  monkeypatch.setattr(_fonts.shutil, 'which', lambda name: None)
  monkeypatch.setitem(_fonts.FONT_SETS, 'some', _fonts.FontSet(
      families=('DejaVu Serif', 'Nope Sans', 'Nope Serif'), prefixes=('Nope',)))
  monkeypatch.setitem(_fonts.FONT_SETS, 'none', _fonts.FontSet(
      families=('Nope Sans', 'Nope Serif'), install='apt-get install nope'))
  _fonts._fc_list.cache_clear()
  try:
    with caplog.at_level(logging.DEBUG, logger='tcm_jax'):
      assert len(glyphs.find_faces('some')) == 1
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, caplog.text
    assert ('3 of its 4 families are not installed (Nope Sans, Nope Serif, Nope*)'
            in warned[0].getMessage())
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger='tcm_jax'):
      with pytest.raises(glyphs.GlyphFontError,
                         match=r"set 'none'.*Nope Sans, Nope Serif.*install nope"):
        glyphs.find_faces('none')
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  finally:
    _fonts._fc_list.cache_clear()


def test_font_hash_follows_a_rewrite_that_keeps_size_and_mtime(tmp_path):
  path = tmp_path / 'font.ttf'
  path.write_bytes(b'a' * 1000)
  before = os.stat(path)
  assert _fonts._sha256(str(path)) == hashlib.sha256(b'a' * 1000).hexdigest()
  for _ in range(100):  # file times tick coarsely: until the ctime moves
    time.sleep(0.005)
    with open(path, 'r+b') as f:
      f.write(b'b' * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    if os.stat(path).st_ctime_ns != before.st_ctime_ns:
      break
  after = os.stat(path)
  assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
  assert _fonts._sha256(str(path)) == hashlib.sha256(b'b' * 1000).hexdigest()


def test_font_files_are_closed(dejavu, tmp_path):
  from fontTools import ttLib  # pylint: disable=g-import-not-at-top
  collection = ttLib.TTCollection()
  collection.fonts = [ttLib.TTFont(dejavu[name].path)
                      for name in ('DejaVuSans.ttf', 'DejaVuSerif.ttf')]
  collection.save(tmp_path / 'pair.ttc')
  del collection
  gc.collect()

  def refuse(index, families):
    raise KeyError(index, families)

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ResourceWarning)
    faces = glyphs.find_faces(str(tmp_path / 'pair.ttc'))
    assert [f.index for f in faces] == [0, 1]
    glyphs.face_coverage(faces[1])
    with pytest.raises(glyphs.GlyphFontError, match='pair.ttc'):
      _fonts._faces_of_file(str(tmp_path / 'pair.ttc'), refuse)
    gc.collect()
  assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [
      str(w.message) for w in caught]


def test_unknown_font_name_says_what_was_searched():
  with pytest.raises(glyphs.GlyphFontError) as error:
    glyphs.find_faces('dejavu,No Such Family 123')
  message = str(error.value)
  assert "'No Such Family 123'" in message and "['cjk', 'dejavu']" in message
  assert 'does not exist' in message and ('fc-list' in message
                                          or 'font files under' in message)


@pytest.mark.parametrize('content', ['junk', 'truncated'])
def test_corrupt_font_file_is_named(dejavu, tmp_path, content):
  path = tmp_path / 'bad.ttf'
  with open(dejavu['DejaVuSans.ttf'].path, 'rb') as f:
    path.write_bytes(b'\x00\x01junk' * 50 if content == 'junk' else f.read(3000))
  for spec in (str(path), str(tmp_path)):
    with pytest.raises(glyphs.GlyphFontError, match=re.escape(str(path))) as error:
      glyphs.find_faces(spec)
    assert isinstance(error.value, ValueError)


def test_coverage_comes_from_the_cmap(dejavu, tmp_path):
  sans = dejavu['DejaVuSans.ttf']
  coverage = glyphs.face_coverage(sans)
  assert ord('A') in coverage and 0x4E00 not in coverage
  data = _render(tmp_path, 'latin,U+4E00')
  dropped = {d['code_point']: d['reason'] for d in data.manifest['dropped']}
  assert dropped == {0x4E00: 'not covered by any face'}
  for face, entry in zip(data.faces, data.manifest['faces']):
    expected = np.isin(glyphs.parse_characters('latin,U+4E00'),
                       glyphs.face_coverage(face)).sum()
    assert entry['covered'] == expected


# --- Rendering ------------------------------------------------------------------------------

def _ink_box(image):
  rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
  return rows[0], rows[-1], cols[0], cols[-1]


@pytest.mark.parametrize('name', ['DejaVuSans.ttf', 'DejaVuSerif-Italic.ttf',
                                  'DejaVuSansMono-Bold.ttf'])
@pytest.mark.parametrize('size, fraction', [(32, 0.875), (24, 0.5)])
def test_glyph_is_centred_and_its_ink_box_is_the_fraction_asked(
    dejavu, name, size, fraction):
  for character in 'Ag-I.W':
    image = glyphs.render_glyph(dejavu[name], ord(character), image_size=size,
                                ink_fraction=fraction)
    assert image.shape == (size, size) and image.dtype == np.uint8
    top, bottom, left, right = _ink_box(image)
    longer = max(bottom - top + 1, right - left + 1)
    assert abs(longer - round(fraction * size)) <= 1, (character, longer)
    assert abs((top + bottom) / 2 - (size - 1) / 2) <= 1, character
    assert abs((left + right) / 2 - (size - 1) / 2) <= 1, character
    assert image.max() >= 200


def test_blank_renders_are_dropped_even_when_the_cmap_claims_them(dejavu, tmp_path):
  sans = dejavu['DejaVuSans.ttf']
  coverage = glyphs.face_coverage(sans)
  assert 0x20 in coverage and 0x09 not in coverage  # the premise, checked
  assert glyphs.render_glyph(sans, 0x20) is None
  data = _render(tmp_path, 'latin,U+0020,U+0009')
  dropped = {d['code_point']: d['reason'] for d in data.manifest['dropped']}
  assert dropped == {0x20: 'blank in every face that covers it',
                     0x09: 'not covered by any face'}
  counts = data.manifest['counts']
  assert (counts['requested'], counts['covered'], counts['kept']) == (54, 53, 52)
  assert 0x20 not in data.code_points
  assert all(image.any() for image in data.images)


def test_almost_inkless_renders_are_blank(dejavu, monkeypatch):
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  sans = dejavu['DejaVuSans.ttf']
  size = _fonts.INK_REFERENCE_SIZE // _fonts.RENDER_SCALE  # the threshold as set
  font = ImageFont.truetype(sans.path, _fonts.RENDER_SCALE * size,
                            layout_engine=ImageFont.Layout.BASIC)
  left, top, right, bottom = font.getbbox('.')
  canvas = Image.new('L', (right - left, bottom - top))
  ImageDraw.Draw(canvas).text((-left, -top), '.', fill=255, font=font)
  dot_ink = np.count_nonzero(np.asarray(canvas) >= 128)
  assert glyphs.render_glyph(sans, ord('.'), image_size=size) is not None
  monkeypatch.setattr(_fonts, 'MIN_INK_PIXELS', dot_ink + 1)
  assert glyphs.render_glyph(sans, ord('.'), image_size=size) is None
  assert glyphs.render_glyph(sans, ord('A'), image_size=size) is not None


def test_the_blank_threshold_scales_with_the_image_size(dejavu):
  sans = dejavu['DejaVuSans.ttf']
  for size in (4, 5, 6, 8):  # a dot is a few pixels at 4 x these render sizes
    for character in '.,\'':
      image = glyphs.render_glyph(sans, ord(character), image_size=size)
      assert image is not None and image.any(), (size, character)
  assert glyphs.render_glyph(sans, ord(' '), image_size=4) is None
  assert _fonts._min_ink(_fonts.INK_REFERENCE_SIZE) == _fonts.MIN_INK_PIXELS
  assert _fonts._min_ink(16) == 1
  assert _fonts._min_ink(4 * _fonts.INK_REFERENCE_SIZE) == 16 * _fonts.MIN_INK_PIXELS


@pytest.mark.parametrize('size, fraction, message', [
    (16, 1.5, r'ink_fraction must be a number in \(0, 1\], got 1\.5\.'),
    (16, 0.0, r'ink_fraction must be a number in \(0, 1\], got 0\.0\.'),
    (16, 0.01, r'ink_fraction must leave at least a pixel .* got 0\.01 at '
     r'image_size 16\.'),
    (16, True, r'ink_fraction must be a number in \(0, 1\], got True\.'),
    (2, 0.5, r'image_size must be an integer >= 4, got 2\.'),
    (16.0, 0.5, r'image_size must be an integer >= 4, got 16\.0\.'),
])
def test_render_parameters_are_checked(dejavu, size, fraction, message):
  sans = dejavu['DejaVuSans.ttf']
  with pytest.raises(ValueError, match=message):
    glyphs.render_glyph(sans, 65, image_size=size, ink_fraction=fraction)
  with pytest.raises(ValueError, match=message):
    glyphs.render_chunk(sans.path, 0, [65], size, fraction)


def test_cjk_error_says_how_to_install_the_fonts(tmp_path):
  # Ugaritic: in no CJK face; without the fonts the error is find_faces'.
  with pytest.raises(glyphs.GlyphFontError,
                     match='apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu'):
    _render(tmp_path, 'U+10380-U+10381', 'cjk')


# --- The command ------------------------------------------------------------------------------

def test_command_prints_the_facts_and_draws_the_figure(tmp_path):
  figure = tmp_path / 'figures' / 'glyphs.png'
  run = subprocess.run(
      CLI + ['--characters', 'latin,greek', '--fonts', 'dejavu', '--image_size',
             '12', '--cache_dir', str(tmp_path), '--pretrain_characters',
             'cyrillic', '--figure', str(figure), '--figure_characters', '3'],
      capture_output=True, text=True, check=True)
  assert (f'Glyphs: 101 characters (classes) in {DEJAVU_FACES} faces'
          in run.stdout)
  assert 'DejaVu Sans Mono Bold' in run.stdout and '  test: ' in run.stdout
  assert '  pretrain: 64 classes' in run.stdout and f'Figure: {figure}' in run.stdout
  assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('arguments, message', [
    (['--characters', 'U+ZZZZ'], "Bad character item 'U+ZZZZ'"),
    (['--fonts', '/no/such/font.ttf'], "installed family is named '/no/such/font.ttf'"),
    (['--image_size', 'big'], "--image_size: expected a positive integer"),
    (['--characters', 'U+4E00'], 'No face covers any of the 1 characters'),
    (['--cache_dir', '{file}/cache'], 'Cannot write the glyph cache'),
    (['--fonts', '{empty}'], 'holds no .ttf/.otf/.ttc/.otc font file'),
    (['--ink_fraction', '1.5'], 'ink_fraction must be a number in (0, 1], got 1.5.'),
])
def test_command_errors_are_one_line(tmp_path, arguments, message):
  (tmp_path / 'file').write_text('')
  (tmp_path / 'empty').mkdir()
  arguments = [a.format(file=tmp_path / 'file', empty=tmp_path / 'empty')
               for a in arguments]
  defaults = ['--fonts', 'dejavu', '--cache_dir', str(tmp_path)]
  run = subprocess.run(CLI + defaults + arguments, capture_output=True, text=True)
  assert run.returncode != 0
  assert 'Traceback' not in run.stderr and run.stderr.count('\n') == 1
  assert run.stderr.startswith('python -m tcm_jax.data.glyphs: error: ')
  assert message in run.stderr


def _run_patched(tmp_path, patch, arguments, **env):
  """The command, run after the Python statements `patch` (in a fresh process)."""
  script = ('import sys\nfrom tcm_jax.data import _fonts, glyphs\n' + patch
            + '\nglyphs.main(sys.argv[1:])\n')
  return subprocess.run([sys.executable, '-c', script, '--cache_dir', str(tmp_path),
                         *arguments], capture_output=True, text=True,
                        env={**os.environ, **env})


def test_command_without_the_cjk_fonts_says_so_in_one_line(tmp_path):
  # fontconfig with an empty configuration lists nothing; the font directories
  # scanned instead hold no CJK face.
  config = tmp_path / 'fonts.conf'
  config.write_text('<?xml version="1.0"?>\n<fontconfig></fontconfig>\n')
  (tmp_path / 'fonts').mkdir()
  patch = f"_fonts.SYSTEM_FONT_DIRS = ({str(tmp_path / 'fonts')!r},)"
  run = _run_patched(tmp_path, patch, [], FONTCONFIG_FILE=str(config))
  assert run.returncode != 0 and run.stdout == ''
  assert 'Traceback' not in run.stderr and run.stderr.count('\n') == 1, run.stderr
  assert run.stderr.startswith("python -m tcm_jax.data.glyphs: error: No font of "
                               "the set 'cjk' is installed (searched the font files "
                               f"under {tmp_path / 'fonts'} for Noto Sans CJK JP")
  assert 'apt-get install fonts-noto-cjk' in run.stderr


def test_command_turns_any_error_into_one_line(tmp_path):
  patch = ('def fail(*args, **kwargs):\n  raise RuntimeError("a worker broke")\n'
           'glyphs.dataset_facts = fail')
  run = _run_patched(tmp_path, patch, ['--fonts', 'dejavu'])
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert run.stderr == ('python -m tcm_jax.data.glyphs: error: RuntimeError: a '
                        'worker broke\n')


# --- The CJK set, where its fonts are installed -------------------------------------------

@pytest.mark.skipif(not os.path.exists(NOTO_CJK),
                    reason='Noto CJK fonts absent (apt-get install fonts-noto-cjk)')
def test_cjk_faces_give_many_distinct_samples_per_kanji(tmp_path):
  collection = glyphs.find_faces(NOTO_CJK)
  assert [f.index for f in collection] == list(range(len(collection)))
  assert len(collection) >= 5  # every face of the .ttc
  kanji = glyphs.CHARACTER_SETS['jis_level1'][::15]
  data = glyphs.render_dataset(kanji, 'cjk', image_size=16, cache_dir=tmp_path,
                               progress=False)
  assert len(kanji) >= 190
  per_class = np.unique(data.code_points, return_counts=True)[1]
  assert np.mean(per_class >= 7) > 0.9, np.bincount(per_class)
  families = {data.faces[i].family for i in np.unique(data.face_ids)}
  kouzan = {f for f in families if f.startswith('KouzanBrushFont')}
  assert kouzan and any(f.startswith('Noto Serif CJK') for f in families)
  # The brush glyphs, drawn small in their em box, fill the image like the rest.
  for face_id in np.unique(data.face_ids):
    images = data.images[data.face_ids == face_id]
    heights = [b - t + 1 for t, b, _, _ in map(_ink_box, images[:20])]
    widths = [r - l + 1 for _, _, l, r in map(_ink_box, images[:20])]
    assert np.median(np.maximum(heights, widths)) >= round(0.875 * 16) - 1
