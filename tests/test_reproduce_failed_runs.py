"""scripts/reproduce.py: a run that fails is kept, reported and left out.

A run whose training diverges, or whose embeddings collapse so that the
calibration range is empty, is an outcome of the study, not a mistake of it:
the study records it as failed and goes on; the report lists it and leaves
it out of the means. A bad config or a failed pretraining still stops it.
"""

import json
import pathlib

import numpy as np
import pytest

from tcm_jax import config as config_lib
from tcm_jax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / 'configs' / 'digits_open.py')
# (Its own module name: tests/test_reproduce.py loads the script as well.)
reproduce = config_lib.load_module(REPO / 'scripts' / 'reproduce.py',
                                   'reproduce_failed_runs', register=True)
COLLAPSED = 'the calibration range collapsed: pass distance_range explicitly.'


def _args(tmp_path, *losses):
  return reproduce.parse_args(['--config', CONFIG, '--losses', *losses,
                               '--seeds', '3', '--regimes', 'scratch',
                               '--workdir', str(tmp_path)])


def _finished(loss, variant, seed, opis, recall):
  metrics = dict(recall_at_1=recall, map_at_r=0.4, opis=opis,
                 eps_opis=2 * opis, mean_utility=0.5, mean_tpr=0.6)
  pairs = dict(margin_pos=0.9, margin_neg=0.5, hard_pos_fraction=0.2,
               hard_neg_fraction=0.01)
  return (reproduce.Run('scratch', loss, variant, seed),
          dict(metrics=metrics, tcm_pairs=pairs, seconds=1.0,
               num_classes=100, num_images=1000))


def _failed(loss, variant, seed):
  return (reproduce.Run('scratch', loss, variant, seed),
          dict(failed=f'CalibrationRangeError: {COLLAPSED}', metrics=None, seconds=2.0))


def _results():
  """contrastive: seed 1 of the data margins failed; triplet: all failed."""
  items = [_finished('contrastive', 'none', s, 0.02 + 0.001 * s, 0.8)
           for s in range(3)]
  items += [_finished('contrastive', 'data', 0, 0.010, 0.81),
            _failed('contrastive', 'data', 1),
            _finished('contrastive', 'data', 2, 0.014, 0.83)]
  items += [_finished('triplet', 'none', s, 0.03, 0.7) for s in range(3)]
  items += [_failed('triplet', 'data', s) for s in range(3)]
  return dict(items)


def _row(lines, loss, label):
  rows = [line for line in lines if line.startswith(f'| {loss} | {label} |')]
  assert len(rows) == 1, (loss, label, lines)
  return [cell.strip() for cell in rows[0].strip('|').split('|')]


def test_a_cell_with_a_failed_run_is_the_mean_of_the_others(tmp_path):
  args = _args(tmp_path, 'contrastive', 'triplet')
  results = _results()
  stats = reproduce.cell_stats(results, 'scratch', 'contrastive', 'data')
  assert stats['opis'].n == 2
  np.testing.assert_allclose(stats['opis'].mean, 0.012)
  np.testing.assert_allclose(stats['opis'].std, np.std([0.010, 0.014],
                                                        ddof=1))
  assert reproduce.cell_stats(results, 'scratch', 'triplet', 'data') is None
  lines = reproduce.regime_table(results, 'scratch', args)
  header = lines[0].strip('|').split('|')
  row = _row(lines, 'contrastive', 'TCM, margins from data (1 failed)')
  assert len(row) == len(header)
  assert row[4] == '0.01200 ± 0.00283'
  # Every run of a cell failed: one row that says so, as wide as the table.
  row = _row(lines, 'triplet', 'TCM, margins from data (3 failed)')
  assert row[2] == 'every run failed' and len(row) == len(header)
  assert all(not cell for cell in row[3:])
  # Cells without failures keep their plain label.
  _row(lines, 'contrastive', 'no TCM')


def test_failed_runs_are_listed_and_counted_in_the_summary(tmp_path):
  args = _args(tmp_path, 'contrastive', 'triplet')
  results = _results()
  listed = reproduce.failure_lines(results, 'scratch', args)
  assert [line for line in listed if line.startswith('- ')] == [
      f'- `scratch/{name}`: CalibrationRangeError: {COLLAPSED}' for name in (
          'contrastive-data-seed1', 'triplet-data-seed0',
          'triplet-data-seed1', 'triplet-data-seed2')]
  assert reproduce.failure_lines(results, 'finetune', args) == []
  summary = reproduce.regime_summary(results, 'scratch', args)
  assert ('4 run(s) failed and are left out of the means: contrastive TCM, '
          'margins from data seed 1, triplet TCM, margins from data seed 0'
          in summary), summary
  # Only contrastive has finished runs of both variants; with a failed seed
  # its change is not judged: no `*`, not counted beyond the uncertainty.
  assert 'lowered the mean OPIS for 1 of 1 base losses' in summary
  assert 'beyond its uncertainty for 0 (none)' in summary
  assert 'Not judged, a run having failed: contrastive.' in summary
  (found,) = reproduce.comparisons(results, 'scratch', ['contrastive'],
                                   'data')
  assert found.num_failed == 1 and not found.clear('opis')
  row = _row(reproduce.regime_table(results, 'scratch', args), 'contrastive',
             'TCM, margins from data (1 failed)')
  assert '*' not in row[-2] and '*' not in row[-1]
  assert reproduce.conclusion_lines(results, args)[2].endswith('| 1 |')
  figure = reproduce._figure_runs(results, 'scratch', 'data')  # pylint: disable=protected-access
  assert len(figure) == 3 + 2 + 3


def test_a_run_that_fails_in_training_is_written_as_failed(
    tmp_path, monkeypatch):
  def collapse(config, workdir, devices=None):
    raise metrics.CalibrationRangeError(COLLAPSED)
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', collapse)
  args = _args(tmp_path, 'contrastive')
  run = reproduce.Run('scratch', 'contrastive', 'data', 1)
  config = reproduce.run_config(reproduce.base_config(args), run, args, '')
  run_dir = tmp_path / run.name
  result = reproduce.train_run(run, config, str(run_dir))
  assert result['failed'] == f'CalibrationRangeError: {COLLAPSED}'
  assert result['metrics'] is None
  saved = json.loads((run_dir / 'result.json').read_text())
  assert saved['failed'] == result['failed']
  # Read back as it was, without training again.
  assert reproduce.read_result(str(run_dir / 'result.json'),
                               config)['failed'] == result['failed']


def test_a_failed_pretraining_or_a_bad_config_stops_the_study(
    tmp_path, monkeypatch):
  def collapse(config, workdir, devices=None):
    raise metrics.CalibrationRangeError(COLLAPSED)
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', collapse)
  args = _args(tmp_path, 'contrastive')
  base = reproduce.base_config(args)
  # (digits_open has no pretrain side: a from-scratch run's config stands in
  # for the pretraining's, which is not the point here.)
  config = reproduce.run_config(
      base, reproduce.Run('scratch', 'contrastive', 'none', 0), args, '')
  run = reproduce.Run('finetune', 'pretrain', 'none', 0)
  with pytest.raises(RuntimeError, match='Run finetune/pretrain-seed0 failed: the calibration'):
    reproduce.train_run(run, config, str(tmp_path / run.name))
  assert not (tmp_path / run.name / 'result.json').exists()
  run = reproduce.Run('scratch', 'contrastive', 'none', 0)
  config = reproduce.run_config(base, run, args, '')
  config.loss.name = 'no_such_loss'
  with pytest.raises(ValueError, match='loss.name'):
    reproduce.train_run(run, config, str(tmp_path / run.name))
  assert not (tmp_path / run.name / 'result.json').exists()


def test_other_errors_of_a_run_stop_the_study(tmp_path, monkeypatch):
  # Missing fonts, a checkpoint of another config, ...: not outcomes of the
  # training, so never recorded as a failed run that later sittings keep.
  def missing_fonts(config, workdir, devices=None):
    raise ValueError('no CJK font found')
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', missing_fonts)
  args = _args(tmp_path, 'contrastive')
  run = reproduce.Run('scratch', 'contrastive', 'data', 0)
  config = reproduce.run_config(reproduce.base_config(args), run, args, '')
  with pytest.raises(ValueError, match='no CJK font found'):
    reproduce.train_run(run, config, str(tmp_path / run.name))
  assert not (tmp_path / run.name / 'result.json').exists()


def test_a_failed_runs_recall_is_reported_from_its_embeddings(tmp_path):
  # Recall@1 needs no calibration range: a collapsed run still has one.
  args = _args(tmp_path, 'contrastive', 'triplet')
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(6), 5)
  z = rng.normal(size=(30, 4)).astype(np.float32)
  run_dir = tmp_path / 'scratch' / 'contrastive-data-seed1'
  run_dir.mkdir(parents=True)
  np.savez(run_dir / 'embeddings.failed.npz', embeddings=z, labels=labels)
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  expected = np.mean(labels[np.argmax(similarity, axis=1)] == labels)
  listed = reproduce.failure_lines(_results(), 'scratch', args)
  assert (f'- `scratch/contrastive-data-seed1`: CalibrationRangeError: '
          f'{COLLAPSED} (its Recall@1: {expected:.4f})') in listed
  # Runs that saved no embeddings are listed without one.
  assert (f'- `scratch/triplet-data-seed0`: CalibrationRangeError: '
          f'{COLLAPSED}') in listed
