"""Glyphs: character sets, fonts, rendering, the cache, class splits, the command."""

import hashlib
import logging
import os
import re
import shutil
import string
import subprocess
import sys
import threading
import unicodedata

import numpy as np
import pytest

from tcm_jax.data import _fonts
from tcm_jax.data import _glyph_cache
from tcm_jax.data import datasets
from tcm_jax.data import glyphs

NOTO_CJK = '/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc'
CLI = [sys.executable, '-m', 'tcm_jax.data.glyphs']


@pytest.fixture(scope='module')
def dejavu():
  """The bundled DejaVu faces by file name."""
  return {os.path.basename(face.path): face for face in glyphs.find_faces('dejavu')}


def _render(cache_dir, characters='latin', fonts='dejavu', **kwargs):
  kwargs = {'image_size': 12, 'progress': False, **kwargs}
  return glyphs.render_dataset(characters, fonts, cache_dir=cache_dir, **kwargs)


def _npy_bytes(data):
  return {name: open(os.path.join(data.cache_path, name), 'rb').read()
          for name in glyphs.FILES}


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
  assert [(f.path, f.index) for f in faces] == sorted((f.path, f.index) for f in faces)
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
  assert mixed[0].path == str(tmp_path / 'sub' / 'copy.ttf')


def test_family_lookup_without_fc_list(dejavu, tmp_path, monkeypatch, caplog):
  shutil.copy(dejavu['DejaVuSerif.ttf'].path, tmp_path / 'serif.ttf')
  (tmp_path / 'broken.ttf').write_bytes(b'not a font' * 10)
  monkeypatch.setattr(_fonts, 'SYSTEM_FONT_DIRS', (str(tmp_path),))
  monkeypatch.setattr(_fonts.shutil, 'which', lambda name: None)
  _fonts._fc_list.cache_clear()  # pylint: disable=protected-access
  try:
    with caplog.at_level(logging.WARNING):
      faces = glyphs.find_faces('dejavu serif')
    assert [f.path for f in faces] == [str(tmp_path / 'serif.ttf')]
    assert 'broken.ttf' in caplog.text  # skipped with a warning, not fatal
    with pytest.raises(glyphs.GlyphFontError,
                       match=rf"named 'Nope Sans'.*font files under {tmp_path}"):
      glyphs.find_faces('Nope Sans')
  finally:
    _fonts._fc_list.cache_clear()  # pylint: disable=protected-access


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
  size = 16
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


def test_identical_faces_count_once(dejavu, tmp_path):
  original = dejavu['DejaVuSans.ttf'].path
  copy = tmp_path / 'fonts' / 'copy.ttf'
  copy.parent.mkdir()
  shutil.copy(original, copy)
  data = _render(tmp_path / 'cache', fonts=[original, str(copy)], min_faces=1)
  first = min(data.faces, key=lambda f: f.path)
  assert len(data.faces) == 2 and data.faces[0] == first
  assert np.all(data.face_ids == 0)
  np.testing.assert_array_equal(data.code_points, glyphs.CHARACTER_SETS['latin'])
  assert data.manifest['faces'][1]['duplicates'] == 52
  with pytest.raises(ValueError, match=r'Only 0 of the 52 .*52 fewer than 2 '
                     'distinct faces'):
    _render(tmp_path / 'cache', fonts=[original, str(copy)], min_faces=2)


def test_min_faces_drops_the_thin_characters(tmp_path):
  spec = 'latin,U+2C60-U+2C7F,U+0250-U+026F'  # extensions that few faces draw
  everything = _render(tmp_path, spec, min_faces=1)
  points, per_class = np.unique(everything.code_points, return_counts=True)
  threshold = int(per_class.max())
  thin = set(points[per_class < threshold].tolist())
  assert thin and len(thin) < len(points)  # the premise: both kinds present
  data = _render(tmp_path, spec, min_faces=threshold)
  dropped = {d['code_point']: d for d in data.manifest['dropped']}
  reason = f'fewer than {threshold} distinct faces'
  assert {c for c, d in dropped.items() if d['reason'] == reason} == thin
  assert set(data.code_points.tolist()) == set(points.tolist()) - thin
  for c, d in dropped.items():
    if c in thin:
      assert d['distinct_faces'] == per_class[points == c][0]


def test_fewer_than_two_characters_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r'Only 1 of the 2 characters .* at least '
                     r'2\. Dropped: 1 not covered by any face\.'):
    _render(tmp_path, 'U+0041,U+4E00')


def test_no_covering_face_lists_characters_and_fonts(tmp_path):
  with pytest.raises(glyphs.GlyphFontError) as error:
    _render(tmp_path, 'U+4E00-U+4E0F')
  message = str(error.value)
  assert 'U+4E00 一' in message and '(16 in all)' in message
  assert 'dejavu' in message and 'DejaVu Sans Bold' in message
  assert not os.listdir(tmp_path / 'glyphs')  # nothing written


def test_cjk_error_says_how_to_install_the_fonts(tmp_path):
  # Ugaritic: in no CJK face; without the fonts the error is find_faces'.
  with pytest.raises(glyphs.GlyphFontError,
                     match='apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu'):
    _render(tmp_path, 'U+10380-U+10381', 'cjk')


# --- The cache ------------------------------------------------------------------------------

def test_second_load_reads_the_cache(tmp_path, monkeypatch):
  first = _render(tmp_path)
  assert not first.from_cache
  monkeypatch.setattr(_glyph_cache, 'rasterise', None)  # any render would fail
  again = _render(tmp_path)
  assert again.from_cache and again.cache_path == first.cache_path
  np.testing.assert_array_equal(again.images, first.images)
  assert sorted(os.listdir(first.cache_path)) == sorted(
      [*glyphs.FILES, 'manifest.json'])
  assert os.path.dirname(first.cache_path) == str(tmp_path / 'glyphs')
  assert again.manifest['files'] == {
      name: hashlib.sha256(content).hexdigest()
      for name, content in _npy_bytes(again).items()}


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('TCM_JAX_CACHE', str(tmp_path / 'env'))
  assert _render(None).cache_path.startswith(str(tmp_path / 'env' / 'glyphs'))
  monkeypatch.delenv('TCM_JAX_CACHE')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert _render(None).cache_path.startswith(
      str(tmp_path / 'xdg' / 'tcm_jax' / 'glyphs'))


def test_renders_are_byte_identical_across_caches_and_workers(tmp_path):
  inline = _render(tmp_path / 'a', 'latin,greek', workers=1)
  pooled = _render(tmp_path / 'b', 'latin,greek', workers=2, executor='process')
  assert pooled.manifest['render']['executor'] == 'process'
  assert os.path.basename(inline.cache_path) == os.path.basename(pooled.cache_path)
  assert _npy_bytes(inline) == _npy_bytes(pooled)
  assert inline.manifest['files'] == pooled.manifest['files']


def test_changed_font_file_is_not_served_from_the_cache(dejavu, tmp_path):
  font = tmp_path / 'fonts' / 'font.ttf'
  font.parent.mkdir()
  shutil.copy(dejavu['DejaVuSans.ttf'].path, font)
  fonts = [str(font), dejavu['DejaVuSerif.ttf'].path]
  before = _render(tmp_path / 'cache', fonts=fonts)
  shutil.copy(dejavu['DejaVuSans-Bold.ttf'].path, font)
  after = _render(tmp_path / 'cache', fonts=fonts)
  assert not after.from_cache and after.cache_path != before.cache_path
  assert after.faces[0].sha256 != before.faces[0].sha256
  assert not np.array_equal(after.images, before.images)
  assert _render(tmp_path / 'cache', fonts=fonts).from_cache


@pytest.mark.parametrize('damage', ['flip a byte of images.npy',
                                    'delete face_ids.npy', 'truncate the manifest',
                                    'change a parameter in the manifest'])
def test_damaged_cache_entry_is_rebuilt(tmp_path, caplog, damage):
  good = _render(tmp_path)
  original = _npy_bytes(good)
  path = good.cache_path
  if damage.startswith('flip'):
    content = bytearray(original['images.npy'])
    content[-7] ^= 0xFF
    open(os.path.join(path, 'images.npy'), 'wb').write(bytes(content))
  elif damage.startswith('delete'):
    os.remove(os.path.join(path, 'face_ids.npy'))
  else:
    manifest = open(os.path.join(path, 'manifest.json')).read()
    if damage.startswith('truncate'):
      manifest = manifest[:len(manifest) // 2]
    else:
      manifest = manifest.replace('"min_faces": 2', '"min_faces": 3')
    open(os.path.join(path, 'manifest.json'), 'w').write(manifest)
  with caplog.at_level(logging.WARNING):
    rebuilt = _render(tmp_path)
  assert 'Rebuilding the glyph cache entry' in caplog.text
  assert not rebuilt.from_cache and rebuilt.cache_path == path
  assert _npy_bytes(rebuilt) == original
  np.testing.assert_array_equal(rebuilt.images, good.images)
  assert sorted(os.listdir(tmp_path / 'glyphs')) == [os.path.basename(path)]
  assert _render(tmp_path).from_cache


def test_unwritable_cache_dir_fails_first_and_leaves_nothing(tmp_path, monkeypatch):
  blocker = tmp_path / 'file'
  blocker.write_text('a regular file')
  monkeypatch.setattr(_glyph_cache, 'rasterise', None)  # not reached
  with pytest.raises(glyphs.GlyphCacheError) as error:
    _render(blocker / 'cache')
  message = str(error.value)
  assert str(blocker / 'cache') in message
  assert 'cache_dir=' in message and '$TCM_JAX_CACHE' in message
  assert isinstance(error.value, OSError)
  assert os.listdir(tmp_path) == ['file'] and blocker.read_text() == 'a regular file'


def test_concurrent_writers_share_one_entry(tmp_path, monkeypatch):
  barrier = threading.Barrier(2, timeout=30)
  build = _glyph_cache.build

  def build_together(*args, **kwargs):
    result = build(*args, **kwargs)
    barrier.wait()  # both have rendered before either publishes
    return result

  monkeypatch.setattr(_glyph_cache, 'build', build_together)
  results = [None, None]

  def work(i):
    results[i] = _render(tmp_path)

  threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert results[0] is not None and results[1] is not None
  np.testing.assert_array_equal(results[0].images, results[1].images)
  assert os.listdir(tmp_path / 'glyphs') == [os.path.basename(results[0].cache_path)]
  assert _render(tmp_path).from_cache


# --- Class splits and the registry ----------------------------------------------------------

def test_split_classes_is_a_pure_function_of_the_code_point():
  points = np.arange(0x4E00, 0x4E00 + 4000)
  sides = glyphs.split_classes(points)
  np.testing.assert_array_equal(sides, glyphs.split_classes(points))
  assert set(sides) == {'train', 'val', 'test'}
  # Adding characters (and reordering) never moves the others.
  more = np.concatenate([np.arange(0xAC00, 0xAC00 + 500), points[::-1]])
  np.testing.assert_array_equal(glyphs.split_classes(more)[500:], sides[::-1])
  for side, p in (('test', 0.5), ('val', 0.1), ('train', 0.4)):
    count = np.sum(sides == side)
    assert abs(count - p * len(points)) < 4 * np.sqrt(len(points) * p * (1 - p))
  for code_point, side in zip(points[:300].tolist(), sides[:300]):  # as documented
    digest = hashlib.sha256(f'tcm_jax-glyphs:{code_point}'.encode()).digest()
    u = int.from_bytes(digest[:8], 'big') / 2**64
    assert side == ('test' if u < 0.5 else 'val' if u < 0.6 else 'train')
  salted = glyphs.split_classes(points, salt='another')
  assert 0.3 < np.mean(salted == sides) < 0.7
  all_test = glyphs.split_classes(points[:50], test_fraction=1.0, val_fraction=0.0)
  assert set(all_test) == {'test'}


@pytest.mark.parametrize('kwargs, message', [
    ({'test_fraction': -0.1}, r'test_fraction must be in \[0, 1\]'),
    ({'val_fraction': 1.5}, r'val_fraction must be in \[0, 1\]'),
    ({'test_fraction': 0.6, 'val_fraction': 0.5}, 'at most 1'),
    ({'test_fraction': 'half'}, 'test_fraction must be'),
    ({'val_fraction': float('nan')}, 'val_fraction must be'),
])
def test_split_classes_checks_its_fractions(kwargs, message):
  with pytest.raises(ValueError, match=message):
    glyphs.split_classes([1, 2], **kwargs)


def _options(tmp_path, **overrides):
  return {'characters': 'latin,greek,cyrillic', 'fonts': 'dejavu',
          'image_size': 12, 'cache_dir': str(tmp_path), **overrides}


def test_load_split_gives_disjoint_sides_of_code_points(tmp_path):
  options = _options(tmp_path)
  splits = {side: datasets.load_split('glyphs', side, glyphs=options)
            for side in ('train', 'val', 'test')}
  data = glyphs.render_dataset('latin,greek,cyrillic', 'dejavu', image_size=12,
                               cache_dir=tmp_path, progress=False)
  classes = np.unique(data.code_points)
  expected = dict(zip(classes.tolist(), glyphs.split_classes(classes)))
  seen = []
  for side, split in splits.items():
    assert split.name == f'glyphs/{side}' and split.labels.dtype == np.int64
    assert {expected[c] for c in split.labels.tolist()} == {side}
    image = split.image(len(split) - 1)
    assert image.shape == (12, 12, 1) and image.dtype == np.uint8
    seen.append(split.labels)
  assert sum(len(s) for s in seen) == len(data.code_points)
  np.testing.assert_array_equal(np.unique(np.concatenate(seen)), classes)
  # An image is the one rendered for its record.
  test = splits['test']
  first = np.flatnonzero(np.isin(data.code_points, test.labels))[0]
  np.testing.assert_array_equal(test.image(0)[..., 0], data.images[first])


def test_pretrain_side_and_its_checks(tmp_path):
  options = _options(tmp_path, characters='latin,greek',
                     pretrain_characters='cyrillic')
  pretrain = datasets.load_split('glyphs', 'pretrain', glyphs=options)
  assert set(pretrain.labels.tolist()) == set(glyphs.CHARACTER_SETS['cyrillic'].tolist())
  with pytest.raises(ValueError, match='share 52 characters'):
    datasets.load_split('glyphs', 'pretrain',
                        glyphs={**options, 'pretrain_characters': 'latin,cyrillic'})
  with pytest.raises(ValueError, match='has no pretrain side'):
    datasets.load_split('glyphs', 'pretrain', glyphs=_options(tmp_path))
  facts = glyphs.dataset_facts(options)
  assert 'pretrain: 64 classes' in facts and '(cyrillic;' in facts


def test_load_split_rejects_bad_sides_and_options(tmp_path):
  with pytest.raises(ValueError, match="side must be 'train', 'val', 'test' or "
                     "'pretrain' for glyphs, got 'validation'"):
    datasets.load_split('glyphs', 'validation', glyphs=_options(tmp_path))
  with pytest.raises(ValueError, match="side must be 'train' or 'test' for digits"):
    datasets.load_split('digits', 'val')
  with pytest.raises(ValueError, match=r"Unknown glyphs option\(s\) \['size'\]; "
                     r"the options are \['cache_dir', 'characters'"):
    datasets.load_split('glyphs', 'train', glyphs={'size': 3})
  with pytest.raises(ValueError, match="side 'val' has no classes"):
    datasets.load_split('glyphs', 'val', glyphs=_options(tmp_path, val_fraction=0.0))
  assert datasets.DATASETS['glyphs'].sides == ('train', 'val', 'test', 'pretrain')
  assert datasets.DATASETS['digits'].sides == ('train', 'test')


def test_dataset_facts_describe_faces_counts_and_sides(tmp_path):
  facts = glyphs.dataset_facts(_options(tmp_path, characters='latin,U+0020'))
  assert 'Glyphs: 52 characters (classes) in 14 faces' in facts
  assert 'DejaVu Serif Italic' in facts and 'DejaVuSerif-Italic.ttf#0' in facts
  assert 'dropped, blank in every face that covers it: U+0020' in facts
  for side in ('train', 'val', 'test'):
    assert re.search(rf'\n  {side}: \d+ classes, \d+ images', facts)
  assert 'pretrain' not in facts and f'Cache: {tmp_path}' in facts


# --- The command ------------------------------------------------------------------------------

def test_command_prints_the_facts_and_draws_the_figure(tmp_path):
  figure = tmp_path / 'figures' / 'glyphs.png'
  run = subprocess.run(
      CLI + ['--characters', 'latin,greek', '--fonts', 'dejavu', '--image_size',
             '12', '--cache_dir', str(tmp_path), '--pretrain_characters',
             'cyrillic', '--figure', str(figure), '--figure_characters', '3'],
      capture_output=True, text=True, check=True)
  assert 'Glyphs: 101 characters (classes) in 14 faces' in run.stdout
  assert 'DejaVu Sans Mono Bold' in run.stdout and '  test: ' in run.stdout
  assert '  pretrain: 64 classes' in run.stdout and f'Figure: {figure}' in run.stdout
  assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('arguments, message', [
    (['--characters', 'U+ZZZZ'], "Bad character item 'U+ZZZZ'"),
    (['--fonts', '/no/such/font.ttf'], "installed family is named '/no/such/font.ttf'"),
    (['--image_size', 'big'], "--image_size: expected a positive integer"),
    (['--characters', 'U+4E00'], 'No face covers any of the 1 characters'),
    (['--cache_dir', '{file}/cache'], 'Cannot write the glyph cache'),
])
def test_command_errors_are_one_line(tmp_path, arguments, message):
  (tmp_path / 'file').write_text('')
  arguments = [a.format(file=tmp_path / 'file') for a in arguments]
  defaults = ['--fonts', 'dejavu', '--cache_dir', str(tmp_path)]
  run = subprocess.run(CLI + defaults + arguments, capture_output=True, text=True)
  assert run.returncode != 0
  assert 'Traceback' not in run.stderr and run.stderr.count('\n') == 1
  assert run.stderr.startswith('python -m tcm_jax.data.glyphs: error: ')
  assert message in run.stderr


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
