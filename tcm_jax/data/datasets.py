"""The datasets by name, and their open-world (class-disjoint) train/test splits.

| name | source | train / test |
|---|---|---|
| `cub200` | TFDS `caltech_birds2011` | classes 0-99 / 100-199 of train+test pooled |
| `cars196` | TFDS `cars196` | classes 0-97 / 98-195 of train+test pooled |
| `sop` | TFDS `stanford_online_products` (label `class_id`) | TFDS train / test |
| `inat2018` | TFDS `i_naturalist2018` | the Smooth-AP class lists (files), train+validation pooled |
| `digits` | scikit-learn's 8x8 digits (offline) | digits 0-4 / 5-9 |
| `digits_closed` | the same | all 10 digits, each class's images halved |
| `synthetic` | generated | first half of the classes / second half |
| `glyphs` | characters rendered in typefaces (offline; `glyphs`) | code-point hash: train / val / test; pretrain: another set |

A `Split` is a random-access view of one side: `len(split)`, `split.labels`
(the class id of each record, known without decoding any image) and
`split.image(i)` (a uint8 `[height, width, channels]` array). For the TFDS
datasets the labels come from a label index built once per TFDS split, by
reading records with image decoding skipped, and cached next to the data.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath
import numpy as np

from tcm_jax import _checks

_log = logging.getLogger(__name__)

INDEX_DIR = 'tcm_jax_label_index'


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset that has not been prepared in the data directory."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to read one dataset and split it by class.

  Attributes:
    name: the registry name.
    tfds_name: the TFDS builder name (None for in-memory datasets).
    label_key: the record feature holding the class id.
    tfds_splits: the TFDS splits read for (train, test): pooled together when
      they are the same tuple, split by class.
    train_classes: class ids [lo, hi) of the training side of a pooled split.
    manual: how the data reaches TFDS when its download is not automatic.
    sides: the sides `load_split` accepts.
  """
  name: str
  tfds_name: str | None = None
  label_key: str = 'label'
  tfds_splits: tuple[tuple[str, ...], tuple[str, ...]] = (('train',), ('test',))
  train_classes: tuple[int, int] | None = None
  manual: str = ''
  sides: tuple[str, ...] = ('train', 'test')


DATASETS = {
    'cub200': DatasetSpec('cub200', 'caltech_birds2011',
                          tfds_splits=(('train', 'test'), ('train', 'test')),
                          train_classes=(0, 100)),
    'cars196': DatasetSpec(
        'cars196', 'cars196',
        tfds_splits=(('train', 'test'), ('train', 'test')),
        train_classes=(0, 98),
        manual='If the download fails (the original host has moved), put the '
               'Cars-196 archives (cars_train.tgz, cars_test.tgz, car_devkit.tgz, '
               'cars_test_annos_withlabels.mat) in {manual_dir} and add '
               '--manual_dir={manual_dir}.'),
    'sop': DatasetSpec('sop', 'stanford_online_products', label_key='class_id'),
    'inat2018': DatasetSpec(
        'inat2018', 'i_naturalist2018',
        tfds_splits=(('train', 'validation'), ('train', 'validation'))),
    'digits': DatasetSpec('digits'),
    'digits_closed': DatasetSpec('digits_closed'),
    'synthetic': DatasetSpec('synthetic'),
    'glyphs': DatasetSpec('glyphs', sides=('train', 'val', 'test', 'pretrain')),
}


# --- Splits ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One side of a dataset: records by position, their labels, and their images.

  Attributes:
    name: e.g. 'cub200/train'.
    labels: `[n]` int64 class id of each record of the split.
    num_classes: distinct class ids.
  """
  name: str
  labels: np.ndarray
  _records: Sequence[Any] = dataclasses.field(repr=False)
  _positions: np.ndarray = dataclasses.field(repr=False)
  _image: Callable[[Any], np.ndarray] = dataclasses.field(repr=False)

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(np.unique(self.labels))

  def image(self, i: int) -> np.ndarray:
    """The `i`-th record's image, uint8 `[height, width, channels]`."""
    return self._image(self._records[int(self._positions[i])])

  def subset(self, rows: np.ndarray) -> Split:
    """The records at positions `rows` of this split, in that order.

    Examples:
      >>> split = load_split('digits', 'test')
      >>> part = split.subset(np.array([0, 5]))
      >>> len(part), part.labels.tolist() == split.labels[[0, 5]].tolist()
      (2, True)
    """
    rows = np.asarray(rows, np.int64)
    return dataclasses.replace(self, labels=self.labels[rows],
                               _positions=self._positions[rows])


def _as_hwc(image: Any) -> np.ndarray:
  """A decoded image as uint8 HWC; JPEG/PNG bytes are decoded with Pillow."""
  if isinstance(image, (bytes, np.bytes_)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(bytes(image))) as decoded:
      image = np.asarray(decoded.convert('RGB'))
  image = np.asarray(image)
  return image[..., None] if image.ndim == 2 else image


def record_image(record: Any) -> np.ndarray:
  """The uint8 HWC image of a `{'image': ...}` record (decoded if encoded).

  Examples:
    >>> import numpy as np
    >>> from tcm_jax.data.datasets import record_image
    >>> record_image({'image': np.zeros((4, 5), np.uint8)}).shape
    (4, 5, 1)
  """
  return _as_hwc(record['image'])


def _split_by_class(spec_name: str, side: str, records: Sequence[Any],
                    labels: np.ndarray, keep: np.ndarray) -> Split:
  positions = np.flatnonzero(keep)
  return Split(f'{spec_name}/{side}', labels[positions].astype(np.int64),
               records, positions, record_image)


# --- In-memory datasets --------------------------------------------------------------

def _digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  # Pixel values 0..16 -> uint8 0..255, one channel.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


class _ArrayRecords(Sequence):
  """In-memory images as records, `{'image': ..., 'label': ...}`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self._images, self._labels = images, labels

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, i):
    return {'image': self._images[i], 'label': self._labels[i]}


def _digits_split(name: str, side: str, seed: int) -> Split:
  images, labels = _digits()
  records = _ArrayRecords(images, labels)
  if name == 'digits':
    keep = labels < 5 if side == 'train' else labels >= 5
  else:  # Closed set: every class, half of its images on each side.
    rng = np.random.default_rng(seed)
    in_train = np.zeros(len(labels), bool)
    for c in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == c))
      in_train[members[:(len(members) + 1) // 2]] = True
    keep = in_train if side == 'train' else ~in_train
  return _split_by_class(name, side, records, labels, keep)


class SyntheticRecords(Sequence):
  """Random images of any size and class count, made on demand from their index.

  Record `i` has class `i % num_classes`; its image is a per-class colour
  pattern plus per-record noise (so that a model can learn the classes), as
  uint8, or JPEG bytes with `jpeg=True` (to measure decoding in a pipeline).
  """

  def __init__(self, num_classes: int, images_per_class: int, image_size: int,
               *, channels: int = 3, jpeg: bool = False, seed: int = 0):
    num_classes, images_per_class, image_size = (
        _checks.check_int(f'synthetic {arg}', value, 1)
        for arg, value in (('num_classes', num_classes),
                           ('images_per_class', images_per_class),
                           ('image_size', image_size)))
    self.num_classes, self.image_size = num_classes, image_size
    self.channels, self.jpeg, self.seed = channels, jpeg, seed
    self._n = num_classes * images_per_class

  def __len__(self):
    return self._n

  def label(self, i: int) -> int:
    return i % self.num_classes

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < self._n:
      raise IndexError(i)
    c = self.label(i)
    pattern = np.random.default_rng([self.seed, 0, c]).uniform(
        0, 255, (4, 4, self.channels))
    cell = -(-self.image_size // 4)
    image = np.kron(pattern, np.ones((cell, cell, 1)))[:self.image_size,
                                                       :self.image_size]
    noise = np.random.default_rng([self.seed, 1, i]).normal(0, 24, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if self.jpeg:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      out = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if self.channels == 1 else image).save(
          out, format='JPEG', quality=90)
      return {'image': out.getvalue(), 'label': c}
    return {'image': image, 'label': c}


def _synthetic_split(side: str, options: dict[str, Any]) -> Split:
  records = SyntheticRecords(**options)
  labels = np.arange(len(records)) % records.num_classes
  half = -(-records.num_classes // 2)
  keep = labels < half if side == 'train' else labels >= half
  return _split_by_class('synthetic', side, records, labels, keep)


# --- TFDS datasets ---------------------------------------------------------------------

def prepare_command(spec: DatasetSpec, data_dir: str) -> str:
  """The shell command that prepares `spec`'s TFDS dataset in `data_dir`.

  Examples:
    >>> from tcm_jax.data.datasets import DATASETS, prepare_command
    >>> print(prepare_command(DATASETS['sop'], '/data/tfds'))
    pip install tensorflow tensorflow-datasets && tfds build stanford_online_products --data_dir=/data/tfds --file_format=array_record
  """
  return (f'pip install tensorflow tensorflow-datasets && tfds build '
          f'{spec.tfds_name} --data_dir={data_dir} --file_format=array_record')


def _default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR',
                        os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def _image_features(tfds_name: str, data_dir: str) -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.builder(tfds_name, data_dir=data_dir).info.features
  return [name for name, feature in features.items()
          if isinstance(feature, tfds.features.Image)]


def _tfds_source(spec: DatasetSpec, split: str, data_dir: str, *,
                 skip_images: bool = False):
  """The TFDS split as random-access records; only the images needed decoded.

  Image features other than `image` (CUB's segmentation masks) are never
  decoded; with `skip_images`, `image` is not either (labels only).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = {name: tfds.decode.SkipDecoding()
              for name in _image_features(spec.tfds_name, data_dir)
              if skip_images or name != 'image'}
  try:
    return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir,
                            download=False, decoders=decoders or None)
  except (FileNotFoundError, NotImplementedError, AssertionError,
          tfds.core.registered.DatasetNotFoundError) as error:
    manual_dir = os.path.join(data_dir, 'downloads', 'manual')
    command = prepare_command(spec, data_dir)
    if 'TFRECORD' in str(error):  # Prepared, in a format without random access.
      command += ' --overwrite'
    lines = [
        f'Dataset {spec.name!r} (TFDS {spec.tfds_name!r}, split {split!r}) is '
        f'not prepared as array_record in the data directory {data_dir!r}. '
        f'Prepare it once (this step needs TensorFlow; training does not) with:',
        f'  {command}',
        f'Files that TFDS cannot download go in {manual_dir} (then add '
        f'--manual_dir={manual_dir}).',
        spec.manual.format(manual_dir=manual_dir),
        f'TFDS said: {error}']
    raise DatasetNotPreparedError(
        '\n'.join(line for line in lines if line)) from error


def _label_index(spec: DatasetSpec, split: str, data_dir: str) -> np.ndarray:
  """The class id of every record of one TFDS split, cached next to the data.

  Built once by reading the records with image decoding skipped; saved in the
  dataset's version directory,
  `<data_dir>/<tfds name>/<version>/tcm_jax_label_index/<split>-<label>.npy`,
  and read from there afterwards, as long as its length is the split's (if the
  directory cannot be written, it is rebuilt every time, with a warning).
  Several processes may build it at once: each writes a file of its own and
  renames it into place.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = _tfds_source(spec, split, data_dir, skip_images=True)
  version = tfds.builder(spec.tfds_name, data_dir=data_dir).version
  path = (epath.Path(data_dir) / spec.tfds_name / str(version) / INDEX_DIR
          / f'{split}-{spec.label_key}.npy')
  if path.exists():
    with path.open('rb') as f:
      labels = np.load(f)
    if len(labels) == len(source):
      return labels
    _log.warning('Rebuilding the label index %s: %d labels for %d records.',
                 path, len(labels), len(source))
  labels = np.fromiter((int(source[i][spec.label_key])
                        for i in range(len(source))), np.int64, len(source))
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
    with tmp.open('wb') as f:
      np.save(f, labels)
    tmp.replace(path)
  except OSError as error:
    _log.warning('Could not cache the label index at %s: %s', path, error)
  return labels


class _Concat(Sequence):
  """Several record sources as one, by position."""

  def __init__(self, sources: Sequence[Sequence[Any]]):
    self._sources = list(sources)
    self._offsets = np.cumsum([0] + [len(s) for s in self._sources])

  def __len__(self):
    return int(self._offsets[-1])

  def __getitem__(self, i):
    s = int(np.searchsorted(self._offsets, i, side='right') - 1)
    return self._sources[s][int(i - self._offsets[s])]


def read_class_list(path: str | os.PathLike) -> np.ndarray:
  """Class ids from a Smooth-AP iNaturalist split file, or a plain list of ids.

  Format: one entry per line; blank lines are skipped. An entry is either a
  class (category) id, or an image path whose parent directory is the id, as
  in the Smooth-AP files `Inaturalist_train_set1.txt` /
  `Inaturalist_test_set1.txt`
  (`train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg`).

  Returns:
    The sorted distinct class ids.

  Examples:
    >>> import os, tempfile
    >>> from tcm_jax.data.datasets import read_class_list
    >>> path = os.path.join(tempfile.mkdtemp(), 'train.txt')
    >>> with open(path, 'w') as f:
    ...   _ = f.write('train_val2018/Aves/12/a.jpg\\ntrain_val2018/Aves/12/b.jpg\\n7\\n')
    >>> read_class_list(path)
    array([ 7, 12])
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f'Class-list file {str(path)!r} does not exist. The iNaturalist-2018 '
        f'split needs the Smooth-AP class lists (Inaturalist_train_set1.txt, '
        f'Inaturalist_test_set1.txt from github.com/Andrew-Brown1/Smooth_AP): '
        f'pass their paths as class_lists=(train_file, test_file).')
  ids = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    entry = line.strip()
    if not entry:
      continue
    token = entry if '/' not in entry else entry.rstrip('/').split('/')[-2]
    try:
      ids.append(int(token))
    except ValueError:
      raise ValueError(
          f'{path}:{number}: expected a class id or an image path '
          f'.../<class id>/<image>.jpg, got {entry!r}.') from None
  if not ids:
    raise ValueError(f'Class-list file {str(path)!r} lists no classes.')
  return np.unique(np.asarray(ids, np.int64))


def _tfds_split(spec: DatasetSpec, side: str, data_dir: str,
                class_lists: tuple[Any, Any] | None) -> Split:
  tfds_splits = spec.tfds_splits[0 if side == 'train' else 1]
  labels = np.concatenate([_label_index(spec, s, data_dir) for s in tfds_splits])
  records = _Concat([_tfds_source(spec, s, data_dir) for s in tfds_splits])
  if spec.name == 'inat2018':
    if class_lists is None:
      raise ValueError(
          "inat2018 needs class_lists=(train_file, test_file): the Smooth-AP "
          "class lists; see read_class_list for the format.")
    train_classes, test_classes = (read_class_list(f) for f in class_lists)
    shared = np.intersect1d(train_classes, test_classes)
    if shared.size:
      raise ValueError(
          f'The inat2018 class lists share {shared.size} classes (e.g. '
          f'{shared[:5].tolist()}); train and test classes must be disjoint.')
    classes = train_classes if side == 'train' else test_classes
    absent = np.setdiff1d(classes, labels)
    if absent.size:
      _log.warning('%d classes of the inat2018 %s list have no records (e.g. '
                   '%s).', absent.size, side, absent[:5].tolist())
    keep = np.isin(labels, classes)
  elif spec.train_classes is not None:
    lo, hi = spec.train_classes
    in_train = (labels >= lo) & (labels < hi)
    keep = in_train if side == 'train' else ~in_train
  else:  # The TFDS splits are already class-disjoint (SOP).
    keep = np.ones(len(labels), bool)
  return _split_by_class(spec.name, side, records, labels, keep)


# --- The entry point ------------------------------------------------------------------------

def load_split(name: str, side: str, *, data_dir: str | None = None,
               class_lists: tuple[Any, Any] | None = None, seed: int = 0,
               synthetic: dict[str, Any] | None = None,
               glyphs: dict[str, Any] | None = None) -> Split:
  """One side of a dataset's open-world split.

  Args:
    name: a key of `DATASETS`.
    side: one of the dataset's `sides`: 'train' or 'test'; for `glyphs` also
      'val' and 'pretrain'.
    data_dir: where the TFDS datasets are prepared (default `$TFDS_DATA_DIR`
      or `~/tensorflow_datasets`).
    class_lists: for `inat2018`, the (train, test) class-list files.
    seed: for `digits_closed`, the per-class assignment of images to sides.
    synthetic: for `synthetic`, options of `SyntheticRecords` (default 20
      classes x 10 images of 32 x 32 x 3).
    glyphs: for `glyphs`, the options of `glyphs.load_glyph_split` (default:
      level-1 kanji in the installed CJK faces, 32 x 32, cached).

  Returns:
    A `Split`.

  Raises:
    ValueError: an unknown name or side.
    DatasetNotPreparedError: a TFDS dataset not prepared in `data_dir`; the
      message holds the command that prepares it.

  Examples:
    >>> from tcm_jax.data.datasets import load_split
    >>> train = load_split('digits', 'train')
    >>> len(train), train.num_classes, train.image(0).shape
    (901, 5, (8, 8, 1))
  """
  if name not in DATASETS:
    raise ValueError(
        f'Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.')
  spec = DATASETS[name]
  _checks.check_choice(f'side for {name}', side, spec.sides)
  if name == 'glyphs':
    from tcm_jax.data import glyphs as glyphs_lib  # pylint: disable=g-import-not-at-top
    return glyphs_lib.load_glyph_split(side, **dict(glyphs or {}))
  if name in ('digits', 'digits_closed'):
    return _digits_split(name, side, seed)
  if name == 'synthetic':
    options = {'num_classes': 20, 'images_per_class': 10, 'image_size': 32,
               **(synthetic or {})}
    return _synthetic_split(side, options)
  return _tfds_split(spec, side, data_dir or _default_data_dir(), class_lists)
