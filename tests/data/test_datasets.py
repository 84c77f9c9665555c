"""Datasets: the open-world splits of the protocol, the label index, errors."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tcm_jax.data import datasets

# Records per TFDS split under the mock: class c has 1 + c % 3 records.
NUM_CLASSES = {'caltech_birds2011': 200, 'cars196': 196,
               'stanford_online_products': 40, 'i_naturalist2018': 30}


class _Records:
  """A random-access mock of a TFDS split that counts its reads."""
  reads = 0

  def __init__(self, labels, label_key):
    self.labels, self.label_key = labels, label_key

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    _Records.reads += 1
    image = np.full((6, 5, 3), self.labels[i] % 256, np.uint8)
    return {'image': image, self.label_key: self.labels[i]}


def _mock_labels(tfds_name, split):
  classes = NUM_CLASSES[tfds_name]
  if tfds_name == 'stanford_online_products':  # class-disjoint TFDS splits
    classes = range(0, 20) if split == 'train' else range(20, 40)
  else:
    classes = range(classes)
  offset = {'train': 0, 'test': 1, 'validation': 2}[split]
  return np.array([c for c in classes for _ in range(1 + (c + offset) % 3)])


def _as_data_source(builder, split, **kwargs):
  del kwargs
  key = 'class_id' if builder.name == 'stanford_online_products' else 'label'
  return _Records(_mock_labels(builder.name, split), key)


@pytest.fixture
def mock_tfds(tmp_path):
  _Records.reads = 0
  with tfds.testing.mock_data(as_data_source_fn=_as_data_source):
    yield str(tmp_path)


@pytest.mark.parametrize('name, tfds_name, train_classes', [
    ('cub200', 'caltech_birds2011', range(0, 100)),
    ('cars196', 'cars196', range(0, 98)),
])
def test_pooled_datasets_split_by_class_range(mock_tfds, name, tfds_name,
                                              train_classes):
  pooled = np.concatenate([_mock_labels(tfds_name, s) for s in ('train', 'test')])
  train = datasets.load_split(name, 'train', data_dir=mock_tfds)
  test = datasets.load_split(name, 'test', data_dir=mock_tfds)
  assert set(train.labels) == set(train_classes)
  assert set(test.labels) == set(range(NUM_CLASSES[tfds_name])) - set(train_classes)
  # Every pooled record on exactly one side, with its own label.
  assert len(train) + len(test) == len(pooled)
  np.testing.assert_array_equal(np.sort(np.concatenate([train.labels, test.labels])),
                                np.sort(pooled))
  for split in (train, test):
    for i in (0, len(split) // 2, len(split) - 1):
      assert split.image(i)[0, 0, 0] == split.labels[i] % 256


def test_sop_keeps_the_tfds_splits(mock_tfds):
  train = datasets.load_split('sop', 'train', data_dir=mock_tfds)
  test = datasets.load_split('sop', 'test', data_dir=mock_tfds)
  np.testing.assert_array_equal(train.labels,
                                _mock_labels('stanford_online_products', 'train'))
  np.testing.assert_array_equal(test.labels,
                                _mock_labels('stanford_online_products', 'test'))
  assert not set(train.labels) & set(test.labels)


def test_inat_uses_the_class_lists(mock_tfds, tmp_path):
  train_file, test_file = tmp_path / 'train.txt', tmp_path / 'test.txt'
  train_file.write_text(''.join(f'train_val2018/Aves/{c}/img{c}.jpg\n'
                                for c in range(0, 20)))
  test_file.write_text('\n'.join(str(c) for c in range(20, 30)) + '\n')
  lists = (train_file, test_file)
  train = datasets.load_split('inat2018', 'train', data_dir=mock_tfds,
                              class_lists=lists)
  test = datasets.load_split('inat2018', 'test', data_dir=mock_tfds,
                             class_lists=lists)
  pooled = np.concatenate([_mock_labels('i_naturalist2018', s)
                           for s in ('train', 'validation')])
  assert set(train.labels) == set(range(20))
  assert set(test.labels) == set(range(20, 30))
  assert len(train) == np.sum(pooled < 20) and len(test) == np.sum(pooled >= 20)


def test_label_index_is_built_once_and_reused(mock_tfds):
  datasets.load_split('cub200', 'train', data_dir=mock_tfds)
  first = _Records.reads
  assert first == sum(len(_mock_labels('caltech_birds2011', s))
                      for s in ('train', 'test'))
  version = str(tfds.builder('caltech_birds2011').version)
  cached = os.path.join(mock_tfds, 'caltech_birds2011', version,
                        datasets.INDEX_DIR, 'train-label.npy')
  np.testing.assert_array_equal(np.load(cached),
                                _mock_labels('caltech_birds2011', 'train'))
  test = datasets.load_split('cub200', 'test', data_dir=mock_tfds)
  assert _Records.reads == first  # no record read to split again
  assert len(test) > 0


def test_label_index_of_another_length_is_rebuilt(mock_tfds):
  version = str(tfds.builder('caltech_birds2011').version)
  cached = os.path.join(mock_tfds, 'caltech_birds2011', version,
                        datasets.INDEX_DIR, 'train-label.npy')
  os.makedirs(os.path.dirname(cached))
  np.save(cached, np.zeros(7, np.int64))  # a stale index: 7 labels
  train = datasets.load_split('cub200', 'train', data_dir=mock_tfds)
  np.testing.assert_array_equal(np.load(cached),
                                _mock_labels('caltech_birds2011', 'train'))
  assert set(train.labels) == set(range(100))


def test_index_build_skips_decoding_every_image_feature(mock_tfds):
  requested = []

  def as_data_source(builder, split, decoders=None, **kwargs):
    requested.append(sorted(decoders or {}))
    return _as_data_source(builder, split, **kwargs)

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    datasets.load_split('cub200', 'train', data_dir=mock_tfds)
  # Label index: neither the image nor CUB's segmentation mask is decoded;
  # training reads: the image only.
  assert ['image', 'segmentation_mask'] in requested
  assert ['segmentation_mask'] in requested


def test_digits_open_world_split():
  train = datasets.load_split('digits', 'train')
  test = datasets.load_split('digits', 'test')
  assert set(train.labels) == {0, 1, 2, 3, 4}
  assert set(test.labels) == {5, 6, 7, 8, 9}
  assert len(train) + len(test) == 1797
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  # Every image on exactly one side, with its label, scaled 0..16 -> 0..255.
  seen = [(int(s.labels[i]), s.image(i).tobytes()) for s in (train, test)
          for i in range(len(s))]
  expected = [(int(y), np.round(x * 255 / 16).astype(np.uint8)[..., None].tobytes())
              for x, y in zip(digits.images, digits.target)]
  assert sorted(seen) == sorted(expected)
  assert train.image(0).shape == (8, 8, 1) and train.image(0).dtype == np.uint8


def test_digits_closed_split_halves_every_class():
  train = datasets.load_split('digits_closed', 'train')
  test = datasets.load_split('digits_closed', 'test')
  assert set(train.labels) == set(test.labels) == set(range(10))
  for c in range(10):
    n_train, n_test = np.sum(train.labels == c), np.sum(test.labels == c)
    assert abs(n_train - n_test) <= 1
  assert len(train) + len(test) == 1797


def test_synthetic_split_and_jpeg():
  options = {'num_classes': 6, 'images_per_class': 3, 'image_size': 20,
             'jpeg': True}
  train = datasets.load_split('synthetic', 'train', synthetic=options)
  test = datasets.load_split('synthetic', 'test', synthetic=options)
  assert set(train.labels) == {0, 1, 2} and set(test.labels) == {3, 4, 5}
  image = train.image(0)
  assert image.shape == (20, 20, 3) and image.dtype == np.uint8
  raw = datasets.load_split('synthetic', 'train',
                            synthetic={**options, 'jpeg': False})
  error = lambda i: np.abs(image.astype(int) - raw.image(i).astype(int)).mean()
  # Lossy, but the decoded image is its own record's, not another class's.
  assert raw.labels[0] != raw.labels[1]
  assert error(0) < 0.5 * error(1)


class TestBadInput:

  def test_unknown_dataset(self):
    with pytest.raises(ValueError, match=r"Unknown dataset 'cub'.*'cub200'"):
      datasets.load_split('cub', 'train')

  def test_unknown_side(self):
    with pytest.raises(ValueError, match=r"side for digits must be one of \['train', 'test'\], "
                       "got 'validation'"):
      datasets.load_split('digits', 'validation')

  @pytest.mark.parametrize('options, message', [
      ({'num_classes': 0}, r'synthetic num_classes must be an integer >= 1, '
       r'got 0\.'),
      # A bool was once taken for 1.
      ({'images_per_class': True}, r'synthetic images_per_class must be an '
       r'integer >= 1, got True\.'),
      ({'image_size': 8.0}, r'synthetic image_size must be an integer >= 1, '
       r'got 8\.0\.'),
  ])
  def test_bad_synthetic_options(self, options, message):
    with pytest.raises(ValueError, match=message):
      datasets.load_split('synthetic', 'train', synthetic=options)

  def test_unprepared_tfds_dataset_says_how_to_prepare_it(self, tmp_path):
    with pytest.raises(datasets.DatasetNotPreparedError) as error:
      datasets.load_split('cars196', 'train', data_dir=str(tmp_path))
    message = str(error.value)
    assert "'cars196'" in message and str(tmp_path) in message
    assert (f'tfds build cars196 --data_dir={tmp_path} '
            '--file_format=array_record') in message
    assert os.path.join(str(tmp_path), 'downloads', 'manual') in message

  def test_inat_without_class_lists(self, mock_tfds):
    with pytest.raises(ValueError, match='inat2018 needs class_lists'):
      datasets.load_split('inat2018', 'train', data_dir=mock_tfds)

  def test_missing_class_list_file(self, mock_tfds, tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"nope\.txt' does not exist.*Smooth-AP"):
      datasets.load_split('inat2018', 'train', data_dir=mock_tfds,
                          class_lists=(tmp_path / 'nope.txt', tmp_path / 'x'))

  def test_overlapping_class_lists(self, mock_tfds, tmp_path):
    (tmp_path / 'a.txt').write_text('1\n2\n3\n')
    (tmp_path / 'b.txt').write_text('3\n4\n')
    with pytest.raises(ValueError, match=r'share 1 classes \(e\.g\. \[3\]\)'):
      datasets.load_split('inat2018', 'test', data_dir=mock_tfds,
                          class_lists=(tmp_path / 'a.txt', tmp_path / 'b.txt'))

  def test_malformed_class_list(self, tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_text('12\nAves/birds/x.jpg\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2: expected a class id'):
      datasets.read_class_list(path)
