"""The trainer on a dataset with a validation side (glyphs), and its baselines.

Fast tests render Latin letters in matplotlib's DejaVu faces, so they run
anywhere; the end-to-end test of `configs/glyphs.py` needs the CJK fonts
(`apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu`, which CI installs).
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax import evaluator as evaluator_lib
from tcm_jax import models
from tcm_jax import report as report_lib
from tcm_jax import train
from tcm_jax.data import glyphs
from tcm_jax.data import inputs as inputs_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """One glyph cache for the module: the tests render the same letters."""
  return tmp_path_factory.mktemp('glyph_cache')


def _latin_config(cache_dir, **train_options):
  config = config_lib.default_config()
  config.dataset.name = 'glyphs'
  config.dataset.glyphs.update(
      characters='latin', fonts='dejavu', image_size=12, min_faces=4,
      cache_dir=str(cache_dir), test_fraction=0.4, val_fraction=0.3,
      pretrain_characters='')
  config.input.recipe = 'glyphs'
  config.input.image_size = 12
  config.input.classes_per_batch, config.input.samples_per_class = 4, 2
  config.input.eval_batch_size = 64
  config.input.num_threads = 1
  config.model = models.encoder_config(
      'resnet18', width=0.125, small_images=True, embedding_size=8,
      in_channels=1)
  config.eval.ks = (1,)
  config.eval.baseline_pca_components = 8
  config.train.progress_bar = False
  config.train.checkpoint_every_steps = 0
  config.train.update({'num_steps': 4, 'eval_every_steps': 2,
                       'log_every_steps': 2, **train_options})
  return config


def _recorded_embeddings(monkeypatch):
  """The names of the splits the trainer embeds, in order."""
  embedded = []
  original = evaluator_lib.embed_split

  def embed_split(embed_fn, state, split, *args, **kwargs):
    embedded.append(split.name)
    return original(embed_fn, state, split, *args, **kwargs)

  monkeypatch.setattr(evaluator_lib, 'embed_split', embed_split)
  return embedded


@pytest.fixture(scope='module')
def latin_run(cache, tmp_path_factory):
  """One 4-step run evaluated at step 2: (workdir, final metrics, embedded)."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    embedded = _recorded_embeddings(monkeypatch)
    workdir = tmp_path_factory.mktemp('latin') / 'run'
    final = train.train_and_evaluate(_latin_config(cache), str(workdir),
                                     devices=jax.devices()[:1])
  return workdir, final, embedded


def _recall_at_1(features, labels):
  """Leave-one-out Recall@1 by cosine, brute force in NumPy."""
  x = features / np.linalg.norm(features, axis=1, keepdims=True)
  similarity = x @ x.T
  np.fill_diagonal(similarity, -np.inf)
  has_positive = (labels[:, None] == labels[None]).sum(axis=1) > 1
  nearest = similarity.argmax(axis=1)  # ties: the first reference, as ours
  return float(np.mean((labels[nearest] == labels)[has_positive]))


def test_model_selection_sees_the_validation_classes_and_test_once(
    cache, latin_run):
  workdir, final, embedded = latin_run
  # Steps 2 and 4 are evaluated on val; the test classes once, at the end,
  # after val (whose embeddings also choose the report's thresholds).
  assert embedded == ['glyphs/val', 'glyphs/val', 'glyphs/test']
  inputs = inputs_lib.create_inputs(_latin_config(cache))
  train_classes = set(inputs.train.labels.tolist())
  val_classes = set(inputs.val.labels.tolist())
  test_classes = set(inputs.test.labels.tolist())
  assert not (train_classes & val_classes or train_classes & test_classes
              or val_classes & test_classes)
  lines = [json.loads(line) for line in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  # The eval curve and the checkpoints' scores are the validation classes'
  # at every evaluated step, the last included; the test metrics are kept
  # apart, so that the best-checkpoint policy never sees them.
  assert [(line['step'], line['kind']) for line in lines
          if line['kind'] != 'train'] == [(2, 'eval'), (4, 'eval'), (4, 'test')]
  test_line = [line for line in lines if line['kind'] == 'test'][0]
  assert test_line['recall_at_1'] == pytest.approx(final['recall_at_1'])
  with checkpoint_lib.Checkpointer(str(workdir / 'checkpoints')) as saved:
    assert saved.all_steps() == [2, 4]
  report = (workdir / 'report.md').read_text()
  assert 'Periodic evaluation used glyphs/val; this evaluation is of test' in report
  assert '## Dataset' in report and 'DejaVu' in report
  # The report's thresholds are chosen on the validation classes and
  # measured on the test classes.
  written = json.loads((workdir / 'metrics.json').read_text())
  assert written['calibration_transfer']['targets'][-1]['resolvable']
  assert '## Calibration transfer from the validation classes' in report
  with np.load(workdir / 'embeddings.npz') as saved:
    assert set(saved['labels'].tolist()) == test_classes
  assert final['recall_at_1'] == pytest.approx(
      report_lib.load_results(str(workdir))[0]['recall_at_1'])


def test_final_split_val_never_embeds_the_test_classes(cache, tmp_path, monkeypatch):
  embedded = _recorded_embeddings(monkeypatch)
  config = _latin_config(cache, eval_every_steps=0)
  config.eval.final_split = 'val'
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  assert embedded == ['glyphs/val']
  assert 'this evaluation is of val' in (workdir / 'report.md').read_text()


def test_final_split_val_without_a_validation_side_fails_before_training(
    tmp_path, monkeypatch):
  config = config_lib.default_config()
  config.dataset.name, config.input.recipe = 'digits', 'small'
  config.input.classes_per_batch = 5
  config.eval.final_split = 'val'
  monkeypatch.setattr(train, 'create_training', None)  # never reached
  with pytest.raises(ValueError, match="'val', but digits has no validation"):
    train.train_and_evaluate(config, str(tmp_path / 'run'),
                             devices=jax.devices()[:1])


def test_baselines_in_metrics_json_and_report_are_the_test_pixels(
    cache, latin_run):
  workdir, final, _ = latin_run
  config = _latin_config(cache)
  values, baselines = report_lib.load_results(str(workdir))
  assert set(baselines) == {'pixels', 'pca8'}
  assert values == pytest.approx(final)
  test = inputs_lib.create_inputs(config).test
  pixels = np.stack([test.image(i).reshape(-1) for i in range(len(test))])
  assert baselines['pixels']['recall_at_1'] == pytest.approx(
      _recall_at_1(pixels.astype(np.float64), test.labels), abs=1e-9)
  report = (workdir / 'report.md').read_text()
  section = report.split('## Against raw-input baselines')[1]
  assert '| metric | model | pixels | pca8 |' in section
  row = re.search(r'^\| Recall@1 \| (.*) \|$', section, re.M).group(1)
  assert [float(v) for v in row.split(' | ')] == pytest.approx(
      [final['recall_at_1'], baselines['pixels']['recall_at_1'],
       baselines['pca8']['recall_at_1']], abs=5e-5)


def test_a_baseline_that_cannot_be_computed_is_left_out_with_a_note(
    cache, tmp_path, monkeypatch):
  from tcm_jax import baselines  # pylint: disable=import-outside-toplevel

  def constant(*args, **kwargs):
    raise ValueError('WhitenedPCA: the training features do not vary.')

  monkeypatch.setattr(baselines, 'baseline_features', constant)
  config = _latin_config(cache, eval_every_steps=0)
  workdir = tmp_path / 'run'
  final = train.train_and_evaluate(config, str(workdir),
                                   devices=jax.devices()[:1])
  assert report_lib.load_results(str(workdir)) == (pytest.approx(final), {})
  report = (workdir / 'report.md').read_text()
  assert 'Omitted, as they could not be computed: pixels, pca8' in report
  assert '## Training' in report


def test_baselines_can_be_turned_off(cache, tmp_path):
  config = _latin_config(cache, eval_every_steps=0)
  config.eval.baselines = False
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  assert report_lib.load_results(str(workdir))[1] == {}
  assert 'raw-input baselines' not in (workdir / 'report.md').read_text()


def _cjk_installed() -> bool:
  try:
    return len(glyphs.find_faces('cjk')) > 0
  except ValueError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _cjk_installed(), reason='needs fonts-noto-cjk and '
                    'fonts-kouzan-mouhitsu (CI installs them)')
def test_glyphs_config_end_to_end_shrunk(tmp_path):
  """configs/glyphs.py from the command line, on 300 of its kanji."""
  characters = ''.join(map(chr, glyphs.CHARACTER_SETS['jis_level1'][:300]))
  workdir = tmp_path / 'run'
  run = subprocess.run(
      [sys.executable, '-m', 'tcm_jax.main', '--config=configs/glyphs.py',
       f'--workdir={workdir}', f'--config.dataset.glyphs.characters={characters}',
       f'--config.dataset.glyphs.cache_dir={tmp_path / "cache"}',
       '--config.train.num_steps=30', '--config.train.eval_every_steps=15',
       '--config.train.checkpoint_every_steps=15',
       '--config.input.eval_batch_size=64', '--config.train.progress_bar=False'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert re.search(r'^\| metric \| model \| pixels \| pca64 \|$', run.stdout,
                   re.M), run.stdout
  report = (workdir / 'report.md').read_text()
  assert 'Kouzan' in report and 'Noto Serif CJK' in report
  assert 'Periodic evaluation used glyphs/val' in report
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset']['glyphs']['characters'] == characters
  shutil.rmtree(workdir)
