"""Glyphs: building (distinct faces, dropped characters), the key, the cache,
and the class splits and registry entry over the rendered dataset."""
# pylint: disable=protected-access  # the tests read the private helpers

import concurrent.futures
import errno
import glob
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading

import matplotlib
import numpy as np
import pytest

from tcm_jax.data import _glyph_cache
from tcm_jax.data import datasets
from tcm_jax.data import glyphs


@pytest.fixture(scope='module')
def dejavu():
  """The bundled DejaVu faces by file name."""
  return {os.path.basename(face.path): face for face in glyphs.find_faces('dejavu')}


def _faces():
  """The faces of the 'dejavu' set: as many as this matplotlib ships."""
  return len(glob.glob(os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf',
                                    'DejaVu*.ttf')))


def _render(cache_dir, characters='latin', fonts='dejavu', **kwargs):
  kwargs = {'image_size': 12, 'progress': False, **kwargs}
  return glyphs.render_dataset(characters, fonts, cache_dir=cache_dir, **kwargs)


def _npy_bytes(data):
  return {name: open(os.path.join(data.cache_path, name), 'rb').read()
          for name in glyphs.FILES}


# --- Building ---------------------------------------------------------------------------

def test_identical_faces_count_once(dejavu, tmp_path):
  original = dejavu['DejaVuSans.ttf'].path
  copy = tmp_path / 'fonts' / 'copy.ttf'
  copy.parent.mkdir()
  shutil.copy(original, copy)
  data = _render(tmp_path / 'cache', fonts=[original, str(copy)], min_faces=1)
  # One sha256: the path breaks the tie.
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
  assert 'dejavu' in message and glyphs.find_faces('dejavu')[0].name in message
  assert not os.listdir(tmp_path / 'glyphs')  # nothing written


def test_same_font_files_elsewhere_give_the_same_key_and_bytes(dejavu, tmp_path):
  # The names sort one way in a/ and the other way in b/ (and a/ before b/).
  names = ['DejaVuSans.ttf', 'DejaVuSerif-Bold.ttf', 'DejaVuSansMono.ttf']
  for directory, order in (('a', names), ('b', names[::-1])):
    (tmp_path / directory).mkdir()
    for rank, name in enumerate(order):
      shutil.copy(dejavu[name].path, tmp_path / directory / f'{rank}.ttf')
  one = _render(tmp_path / 'cache1', 'latin,greek', str(tmp_path / 'a'), min_faces=1)
  two = _render(tmp_path / 'cache2', 'latin,greek', str(tmp_path / 'b'), min_faces=1)
  assert one.manifest['key'] == two.manifest['key']
  assert os.path.basename(one.cache_path) == os.path.basename(two.cache_path)
  assert _npy_bytes(one) == _npy_bytes(two)
  assert [f.sha256 for f in one.faces] == [f.sha256 for f in two.faces] == sorted(
      dejavu[name].sha256 for name in names)


def test_key_includes_the_pillow_and_freetype_versions(monkeypatch):
  from PIL import features  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top
  request = glyphs._request('latin', 'dejavu', 12, 0.875, 2)
  key = request.key
  version = features.version
  monkeypatch.setattr(features, 'version', lambda name: (
      '0.0.1' if name == 'freetype2' else version(name)))
  assert request.key != key
  assert _glyph_cache.libraries()['freetype'] == '0.0.1'
  monkeypatch.undo()
  assert request.key == key
  monkeypatch.setattr(PIL, '__version__', '0.0.1')
  assert request.key != key


class _BreakingPool:
  """A process pool whose workers die after rendering `survive` chunks."""
  survive = 2

  def __init__(self, *args, **kwargs):
    del args, kwargs
    self.submitted = 0

  def submit(self, fn, *args):
    future = concurrent.futures.Future()
    self.submitted += 1
    if self.submitted <= self.survive:
      future.set_result(fn(*args))
    else:
      future.set_exception(concurrent.futures.process.BrokenProcessPool(
          'A process in the process pool was terminated abruptly'))
    return future

  def shutdown(self, **kwargs):
    del kwargs


@pytest.mark.parametrize('survive', [0, 2])
def test_broken_worker_pool_renders_the_rest_here(tmp_path, monkeypatch, caplog,
                                                  survive):
  inline = _render(tmp_path / 'inline', 'latin,greek', workers=1)
  monkeypatch.setattr(_BreakingPool, 'survive', survive)
  monkeypatch.setattr(concurrent.futures, 'ProcessPoolExecutor', _BreakingPool)
  with caplog.at_level(logging.WARNING):
    pooled = _render(tmp_path / 'pooled', 'latin,greek', workers=2)
  assert 'A render worker failed' in caplog.text and '__main__' in caplog.text
  assert _npy_bytes(pooled) == _npy_bytes(inline)
  assert pooled.manifest['render']['executor'] == 'inline'


def test_a_script_without_a_main_guard_still_renders(tmp_path):
  # Spawned workers re-run such a script, and die starting workers of their own.
  script = tmp_path / 'script.py'
  script.write_text(
      'import sys\nfrom tcm_jax.data import glyphs\n'
      "data = glyphs.render_dataset('latin,greek', 'dejavu', image_size=12, "
      'cache_dir=sys.argv[1], progress=False, workers=2)\n'
      'print(data.cache_path)\n')
  run = subprocess.run([sys.executable, str(script), str(tmp_path / 'cache')],
                       capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr
  assert 'A render worker failed' in run.stderr
  inline = _render(tmp_path / 'inline', 'latin,greek', workers=1)
  assert os.path.basename(run.stdout.strip()) == os.path.basename(inline.cache_path)
  assert _npy_bytes(inline) == {
      name: open(os.path.join(run.stdout.strip(), name), 'rb').read()
      for name in glyphs.FILES}


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
  sha256 = lambda data: {f.sha256 for f in data.faces if f.path == str(font)}
  assert sha256(after) != sha256(before)
  assert not np.array_equal(after.images, before.images)
  assert _render(tmp_path / 'cache', fonts=fonts).from_cache


@pytest.mark.parametrize('damage', ['flip a byte of images.npy',
                                    'delete face_ids.npy', 'truncate the manifest',
                                    'change a parameter in the manifest',
                                    'a manifest of []', 'a manifest of null'])
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
    elif damage.startswith('a manifest'):
      manifest = damage.split()[-1]  # valid JSON, not an object
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


def test_a_file_where_the_entry_belongs_is_replaced(tmp_path, caplog):
  request = glyphs._request('latin', 'dejavu', 12, 0.875, 2)
  entry = tmp_path / 'glyphs' / request.key[:20]
  entry.parent.mkdir()
  entry.write_text('not a cache entry')
  with caplog.at_level(logging.WARNING):
    data = _render(tmp_path)
  assert 'Rebuilding the glyph cache entry' in caplog.text
  assert data.cache_path == str(entry) and entry.is_dir()
  assert os.listdir(tmp_path / 'glyphs') == [entry.name]  # no .old leftover
  assert _render(tmp_path).from_cache


def test_a_failing_rename_is_reported_with_its_cause(tmp_path, monkeypatch):
  def rename(source, target):
    raise PermissionError(errno.EACCES, 'Permission denied', str(target))

  monkeypatch.setattr(_glyph_cache.os, 'rename', rename)
  with pytest.raises(glyphs.GlyphCacheError, match='Permission denied') as error:
    _render(tmp_path)
  assert str(tmp_path) in str(error.value)
  monkeypatch.undo()
  assert os.listdir(tmp_path / 'glyphs') == []  # the written entry is removed


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


def test_character_options_may_be_arrays(tmp_path):
  sets = glyphs.CHARACTER_SETS
  options = _options(tmp_path, characters=sets['latin'],
                     pretrain_characters=sets['cyrillic'])
  test = glyphs.load_glyph_split('test', **options)
  assert set(test.labels.tolist()) <= set(sets['latin'].tolist())
  pretrain = glyphs.load_glyph_split('pretrain', **options)
  assert set(pretrain.labels.tolist()) == set(sets['cyrillic'].tolist())
  assert '  pretrain: 64 classes' in glyphs.dataset_facts(options)
  for pretrain_characters in (None, np.array([], np.int64)):  # no pretrain side
    bare = _options(tmp_path, characters=sets['latin'],
                    pretrain_characters=pretrain_characters)
    assert 'pretrain' not in glyphs.dataset_facts(bare)
    with pytest.raises(ValueError, match='has no pretrain side'):
      glyphs.load_glyph_split('pretrain', **bare)


def test_load_split_rejects_bad_sides_and_options(tmp_path):
  with pytest.raises(ValueError, match=r"side for glyphs must be one of \['train', "
                     r"'val', 'test', 'pretrain'\], got 'validation'"):
    datasets.load_split('glyphs', 'validation', glyphs=_options(tmp_path))
  with pytest.raises(ValueError, match=r"side for digits must be one of \['train', 'test'\]"):
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
  assert f'Glyphs: 52 characters (classes) in {_faces()} faces' in facts
  assert 'DejaVu Serif Italic' in facts and 'DejaVuSerif-Italic.ttf#0' in facts
  assert 'dropped, blank in every face that covers it: U+0020' in facts
  for side in ('train', 'val', 'test'):
    assert re.search(rf'\n  {side}: \d+ classes, \d+ images', facts)
  assert 'pretrain' not in facts and f'Cache: {tmp_path}' in facts


def test_request_and_rasterise_check_their_arguments(dejavu):
  face = dejavu['DejaVuSans.ttf']
  make = lambda **kwargs: _glyph_cache.Request.make(
      [face], np.array([65]), 'dejavu',
      **{'image_size': 12, 'ink_fraction': 0.75, 'min_faces': 1, **kwargs})
  for min_faces in (0, True, 1.0):
    with pytest.raises(ValueError, match=re.escape(
        f'min_faces must be an integer >= 1, got {min_faces!r}.')):
      make(min_faces=min_faces)
  request = make(image_size=np.int64(12), min_faces=np.int64(2))
  assert request.parameters == {'image_size': 12, 'ink_fraction': 0.75,
                                'min_faces': 2}
  assert [type(v) for v in request.parameters.values()] == [int, float, int]
  with pytest.raises(ValueError, match=re.escape(
      "executor must be one of ['process', 'thread'], got 'fork'.")):
    _glyph_cache.rasterise([face], np.array([65]), np.ones((1, 1), bool), 12,
                           0.75, executor='fork')
