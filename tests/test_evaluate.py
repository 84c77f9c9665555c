"""The evaluation command: metrics.json, report.md and the figure."""

import json
import subprocess
import sys

import numpy as np
import pytest

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
  assert 'report:' in run.stdout
  written = json.loads((out / 'metrics.json').read_text())
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
