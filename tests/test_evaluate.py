"""The evaluation command: metrics.json, report.md and the figure."""

import errno
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tcm_jax import config as config_lib
from tcm_jax import evaluate
from tcm_jax import metrics
from tcm_jax import report
from tests.metrics.conftest import clustered_set


@pytest.fixture(scope='module')
def npz_file(tmp_path_factory):
  z, labels = clustered_set(12, [1, 30, 25, 2, 40, 18, 33], dim=16)
  path = tmp_path_factory.mktemp('data') / 'embeddings.npz'
  np.savez(path, embeddings=z, labels=labels)
  return path, z, labels


def test_command_writes_the_report(npz_file, tmp_path):
  path, z, labels = npz_file
  out = tmp_path / 'report'
  run = subprocess.run(
      [sys.executable, '-m', 'tcm_jax.evaluate', f'--embeddings={path}',
       f'--out={out}', '--target_far=0.05', '--ks=1,5'],
      capture_output=True, text=True, check=True)
  written = json.loads((out / 'metrics.json').read_text())
  # The human table the trainer prints too, then where everything went.
  lines = run.stdout.splitlines()
  assert lines[:2] == ['| metric | embeddings.npz |', '|---|---|']
  rows = dict(re.findall(r'^\| (.+?) \| ([0-9.]+) \|$', run.stdout, re.M))
  assert list(rows) == ['Recall@1', 'Recall@5', 'MAP@R', 'R-precision',
                        'OPIS', '0.1-OPIS']
  assert float(rows['Recall@5']) == pytest.approx(
      written['recall_at_k']['5'], abs=5e-5)
  assert float(rows['OPIS']) == pytest.approx(written['opis'], abs=5e-6)
  assert lines[-3:] == [f'report: {out / "report.md"}',
                        f'metrics: {out / "metrics.json"}',
                        f'figure: {out / "utility_curves.png"}']
  expected = metrics.evaluate_embeddings(z, labels, target_far=0.05,
                                         ks=(1, 5)).to_dict()
  assert written['opis'] == pytest.approx(expected['opis'], abs=1e-7)
  assert written['recall_at_k'] == expected['recall_at_k']
  assert written['calibration_range'] == expected['calibration_range']
  assert written['excluded_classes'] == [0]  # the singleton class
  report = (out / 'report.md').read_text()
  low, high = expected['calibration_range']['distance']
  assert f'Distances {low:.5f} to {high:.5f}' in report
  assert 'FAR goes from 0.001 to 0.1' in report
  assert '## One global threshold at FAR 0.05' in report
  assert '## Worst classes' in report
  assert ('Excluded: 1 classes without a positive pair (a single sample, or '
          'no reference of their own class): 0; 1 queries') in report
  assert (out / 'utility_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The verification operating points at the default --fars, over all
  # pairs, and their figures.
  points = metrics.operating_points(z, labels, target_far=0.05)
  assert written['operating_points'] == json.loads(json.dumps(
      points.to_dict()))
  assert '## Verification over all pairs' in report
  assert f'ROC AUC {points.auc:.5f}' in report
  assert '| 0.0001 | not resolvable' in report  # 39,000 negatives
  for name in ('det_curve.png', 'class_rates.png'):
    assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert not (out / 'calibration_transfer.png').exists()


def test_thresholds_chosen_on_a_calibration_file(npz_file, tmp_path):
  path, z, labels = npz_file
  calibration_z, calibration_labels = clustered_set(13, [20] * 8, dim=16,
                                                    spread=0.7)
  calibration = tmp_path / 'validation.npz'
  np.savez(calibration, embeddings=calibration_z, labels=calibration_labels)
  out = tmp_path / 'report'
  run = _evaluate(f'--embeddings={path}', f'--out={out}',
                  f'--calibration_embeddings={calibration}',
                  '--fars=0.001,0.01,0.1')
  assert run.returncode == 0, run.stderr
  written = json.loads((out / 'metrics.json').read_text())
  expected = metrics.calibration_transfer(
      z, labels, calibration_z, calibration_labels,
      target_fars=(0.001, 0.01, 0.1))
  assert written['calibration_transfer'] == json.loads(json.dumps(
      expected.to_dict()))
  assert [p['target_far'] for p in written['operating_points'][
      'tar_at_far']] == [0.001, 0.01, 0.1]
  report = (out / 'report.md').read_text()
  assert '## Calibration transfer from validation.npz' in report
  point = expected.points[1]
  assert (f'| 0.01 | {point.threshold:.5f} | {point.calibration_far:.4g} | '
          f'{point.far:.4g} |') in report
  assert (out / 'calibration_transfer.png').exists()


def test_bad_verification_flags_and_calibration_files(npz_file, tmp_path):
  path, z, labels = npz_file
  out = tmp_path / 'out'
  run = _evaluate(f'--embeddings={path}', f'--out={out}', '--fars=0,0.1')
  _assert_one_line_error(run, '--fars takes target FARs in (0, 1]',
                         'got 0.0', status=2)
  run = _evaluate(f'--embeddings={path}', f'--out={out}', '--fars=',
                  f'--calibration_embeddings={path}')
  _assert_one_line_error(run, '--calibration_embeddings needs --fars',
                         status=2)
  narrow = tmp_path / 'narrow.npz'
  np.savez(narrow, embeddings=z[:, :8], labels=labels)
  run = _evaluate(f'--embeddings={path}', f'--out={out}',
                  f'--calibration_embeddings={narrow}')
  _assert_one_line_error(run, f'--calibration_embeddings={narrow}',
                         'dimension (8,)', '(16,)', status=2)
  single = tmp_path / 'single.npz'
  np.savez(single, embeddings=z[:20], labels=np.zeros(20, int))
  run = _evaluate(f'--embeddings={path}', f'--out={out}',
                  f'--calibration_embeddings={single}')
  _assert_one_line_error(run, f'--calibration_embeddings={single}',
                         'at least two classes')
  assert not out.exists()
  # Without operating points: only the report of before.
  run = _evaluate(f'--embeddings={path}', f'--out={out}', '--fars=')
  assert run.returncode == 0, run.stderr
  assert sorted(os.listdir(out)) == ['metrics.json', 'report.md',
                                     'utility_curves.png']


def test_the_one_pass_engine_from_the_command_line(npz_file, tmp_path):
  path, z, labels = npz_file
  out = tmp_path / 'report'
  _evaluate(f'--embeddings={path}', f'--out={out}', '--engine=histogram',
            '--ks=1').check_returncode()
  written = json.loads((out / 'metrics.json').read_text())
  expected = metrics.evaluate_embeddings(z, labels, ks=(1,),
                                         engine='histogram').to_dict()
  exact = metrics.evaluate_embeddings(z, labels, ks=(1,)).to_dict()
  assert written['opis'] == pytest.approx(expected['opis'], abs=1e-7)
  assert written['calibration_range'] == expected['calibration_range']
  # The one-pass engine's bounds are grid edges, the exact engine's not.
  assert written['calibration_range'] != exact['calibration_range']
  for low_high in (written['calibration_range']['distance'],):
    assert [v * 2**14 for v in low_high] == [round(v * 2**14)
                                              for v in low_high]


def test_explicit_distance_range_and_separate_gallery(npz_file, tmp_path):
  _, z, labels = npz_file
  arrays = dict(embeddings=z[::2], labels=labels[::2],
                ref_embeddings=z[1::2], ref_labels=labels[1::2])
  result = report.evaluate_arrays(arrays, str(tmp_path), show_progress=False,
                                  distance_range=(0.2, 0.6))
  assert result.curves.calibration_range.distance == (0.2, 0.6)
  assert result.num_references == len(labels[1::2])
  assert 'Distances 0.20000 to 0.60000 (FAR' in (tmp_path / 'report.md').read_text()


def test_missing_arrays_are_named(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, z=np.zeros((3, 2)), labels=np.zeros(3, int))
  with pytest.raises(ValueError, match=r"missing \['embeddings'\], found "
                     r"\['labels', 'z'\]"):
    report.load_npz(str(path))


def test_command_rejects_bad_input_clearly(npz_file, tmp_path):
  path, _, _ = npz_file
  run = subprocess.run(
      [sys.executable, '-m', 'tcm_jax.evaluate', f'--embeddings={path}',
       f'--out={tmp_path}', '--far_range=0.1,0.01'],
      capture_output=True, text=True)
  assert run.returncode != 0
  assert 'far_range must satisfy' in run.stderr and 'reversed' in run.stderr


@pytest.mark.parametrize('name', ['evaluate_arrays', 'load_npz',
                                  'worst_classes', 'write_report'])
def test_old_names_still_work_with_a_warning(name):
  with pytest.warns(DeprecationWarning,
                    match=f'tcm_jax.evaluate.{name} has moved to '
                    f'tcm_jax.report.{name}'):
    assert getattr(evaluate, name) is getattr(report, name)
  with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
    evaluate.nothing  # pylint: disable=pointless-statement


def _evaluate(*args):
  return subprocess.run(
      [sys.executable, '-m', 'tcm_jax.evaluate', *map(str, args)],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def _assert_one_line_error(run, *fragments, status=1):
  """Exit status, one `error:` line naming what was wrong, no traceback."""
  assert run.returncode == status, run.stderr
  assert 'Traceback' not in run.stderr
  lines = run.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), run.stderr
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


@pytest.fixture
def bad_files(tmp_path):
  good = tmp_path / 'good.npz'
  np.savez(good, embeddings=np.eye(4), labels=np.arange(4))
  files = {name: tmp_path / name for name in (
      'text.npz', 'empty.npz', 'truncated.npz', 'array.npy', 'keys.npz',
      'objects.npz', 'missing.npz', 'strings.npz')}
  files['text.npz'].write_text('embeddings, labels\n0.1, 0\n')
  files['empty.npz'].write_bytes(b'')
  files['truncated.npz'].write_bytes(good.read_bytes()[:150])
  np.save(files['array.npy'], np.eye(3))
  np.savez(files['keys.npz'], z=np.zeros((3, 2)), labels=np.zeros(3, int))
  np.savez(files['objects.npz'], embeddings=np.array([1, 'a'], object),
           labels=np.arange(2))
  np.savez(files['strings.npz'], embeddings=np.eye(4),
           labels=np.array(list('aabb')))
  files['folder'] = tmp_path
  return files


def test_command_names_each_bad_embeddings_file(bad_files, tmp_path):
  expected = {
      # Once numpy's advice to load it unsafely, with allow_pickle.
      'text.npz': 'is not an npz archive (a zip of .npy arrays',
      'empty.npz': 'is empty (0 bytes), not an npz archive',
      'truncated.npz': 'is not a readable npz archive (truncated or damaged',
      'array.npy': 'holds a single .npy array, not an npz archive',
      'keys.npz': ("must hold arrays named embeddings and labels; missing "
                   "['embeddings'], found ['labels', 'z']"),
      'objects.npz': "array 'embeddings' holds Python objects",
      'missing.npz': 'no such file',
      'folder': 'is a folder, not an npz file',
      # What the arrays hold, checked by the metrics: the file named too.
      'strings.npz': 'labels must have an integer dtype',
  }
  for name, fragment in expected.items():
    path = bad_files[name]
    run = _evaluate(f'--embeddings={path}', f'--out={tmp_path / "out"}')
    line = _assert_one_line_error(run, f'--embeddings={path}', fragment)
    assert 'allow_pickle' not in line and 'pickle' not in line
  assert not (tmp_path / 'out').exists()  # nothing was written


def test_command_checks_out_before_any_work(bad_files, tmp_path):
  # The embeddings file is bad too: --out, checked first, is what is named.
  bad = bad_files['text.npz']
  a_file = tmp_path / 'results.txt'
  a_file.write_text('')
  run = _evaluate(f'--embeddings={bad}', f'--out={a_file}')
  _assert_one_line_error(run, f'--out={a_file}', 'is a file, not a folder')
  run = _evaluate(f'--embeddings={bad}', f'--out={a_file / "report"}')
  _assert_one_line_error(run, f'--out={a_file / "report"}',
                         f'{a_file} is a file, not a folder')
  assert a_file.read_text() == ''
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  if os.access(locked, os.W_OK):  # root: a folder no one can write in
    locked = '/sys'
  try:
    with tempfile.TemporaryFile(dir=locked):
      pytest.skip(f'no unwritable folder here ({locked} is writable)')
  except OSError:
    pass
  run = _evaluate(f'--embeddings={bad}', f'--out={locked}/report')
  _assert_one_line_error(run, f'--out={locked}/report',
                         f'cannot write in {locked}')


def test_command_refuses_bad_flags_as_usage_errors(npz_file, tmp_path):
  path, _, _ = npz_file
  out = tmp_path / 'out'
  run = _evaluate(f'--embeddings={path}', f'--out={out}', '--ks=1,x')
  _assert_one_line_error(run, '--ks takes positive integers', "'x'", status=2)
  run = _evaluate(f'--embeddings={path}', f'--out={out}',
                  '--distance_range=0.2')
  _assert_one_line_error(run, '--distance_range takes two numbers', status=2)
  run = _evaluate(f'--out={out}')
  _assert_one_line_error(run, '--embeddings', 'required', status=2)
  assert not out.exists()


@pytest.mark.parametrize('flag, message', [
    ('--epsilon=2', '--epsilon must be in (0, 1), got 2.0.'),
    ('--num_thresholds=10000000', '--num_thresholds=10000000 is more than'),
    ('--block_size=0', '--block_size must be a positive number of rows'),
    ('--far_range=0,0.1', '--far_range must start above 0, got (0.0, 0.1).'),
    ('--engine=fast', 'flag --engine=fast: value should be one of '
     '<exact|histogram>'),
])
def test_evaluation_flags_are_checked_before_the_file_is_read(
    flag, message, tmp_path):
  missing = tmp_path / 'missing.npz'  # never opened: the flag comes first
  run = _evaluate(f'--embeddings={missing}', f'--out={tmp_path / "out"}',
                  flag)
  _assert_one_line_error(run, message, status=2)
  assert 'missing.npz' not in run.stderr


def _markdown_rows(text):
  return re.findall(r'^\| ([^|]+) \| ([0-9.]+) \|$', text, re.M)


def test_results_table_is_the_report_s_table(npz_file, tmp_path):
  # The trainer prints `results_table`; it once said recall_at_1 where the
  # report says Recall@1.
  _, z, labels = npz_file
  evaluation = metrics.evaluate_embeddings(z, labels, ks=(1, 4), epsilon=0.2)
  report.write_report(evaluation, str(tmp_path), source_name='toy')
  in_report = (tmp_path / 'report.md').read_text().split('## Calibration')[0]
  values, _ = report.load_results_dict(evaluation.to_dict())
  table = report.results_table(values, epsilon=0.2)
  assert _markdown_rows(table) == _markdown_rows(in_report)
  assert [label for label, _ in _markdown_rows(table)] == [
      'Recall@1', 'Recall@4', 'MAP@R', 'R-precision', 'OPIS', '0.2-OPIS']
  assert report.results_table(
      {'recall_at_1': 0.91234, 'opis': 0.0123456, 'eps_opis': 0.05},
      {'pixels': {'recall_at_1': 0.5}}, column='run') == (
          '| metric | run | pixels |\n|---|---|---|\n'
          '| Recall@1 | 0.9123 | 0.5000 |\n| OPIS | 0.01235 | - |\n'
          '| eps-OPIS | 0.05000 | - |')


def test_the_figure_has_the_run_s_title_and_the_whole_distance_axis(
    npz_file, tmp_path, monkeypatch):
  _, z, labels = npz_file
  drawn = []
  draw = report.plots.plot_utility_curves
  monkeypatch.setattr(report.plots, 'plot_utility_curves',
                      lambda *a, **k: drawn.append(draw(*a, **k)))
  report.evaluate_arrays({'embeddings': z, 'labels': labels}, str(tmp_path),
                         show_progress=False, title='run-a: arcface + TCM')
  report.evaluate_arrays({'embeddings': z, 'labels': labels}, str(tmp_path),
                         show_progress=False, source_name='set.npz')
  titles = [fig.axes[0].get_title() for fig in drawn]
  assert titles == ['run-a: arcface + TCM', 'Per-class utility of set.npz']
  for fig in drawn:
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 2.0)
    mean = ax.lines[-1].get_xdata()  # the curves span the whole axis too
    assert (mean[0], mean[-1], len(mean)) == (0.0, 2.0,
                                              report.PLOT_THRESHOLDS)


def test_run_title_says_which_run_and_whether_tcm_was_on():
  config = config_lib.default_config()
  config.loss.name = 'multisimilarity'
  for enabled, words in ((True, 'multisimilarity + TCM'),
                         (False, 'multisimilarity without TCM')):
    config.loss.tcm.enabled = enabled
    assert report.run_title(config, 'ms-seed3', 'val') == (
        f'ms-seed3: {words}, the val split')


def test_a_report_that_cannot_be_written_leaves_the_last_one_whole(
    npz_file, tmp_path, monkeypatch):
  arrays = report.load_npz(npz_file[0])
  out = tmp_path / 'out'
  report.evaluate_arrays(arrays, str(out), show_progress=False)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  other = dict(arrays, embeddings=arrays['embeddings'][:, ::-1].copy())

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(report.plots, 'plot_utility_curves', full_disk)
  with pytest.raises(OSError, match=(
      rf"^Writing the report failed \(No space left on device\): '{out}'$")):
    report.evaluate_arrays(other, str(out), show_progress=False)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
