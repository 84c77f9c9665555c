"""The final report's verification: operating points of the final split,
their bootstrap intervals, and thresholds chosen on the validation classes
measured on it."""

import json

import numpy as np
import pytest

from tcm_jax import config as config_lib
from tcm_jax import evaluator
from tcm_jax import metrics
from tcm_jax.data import inputs as inputs_lib
from tcm_jax.metrics import advanced
from tests.metrics.conftest import clustered_set


def _config(**eval_options):
  config = config_lib.default_config()
  config.dataset.name, config.input.recipe = 'digits', 'small'
  config.input.classes_per_batch, config.eval.baselines = 5, False
  config.eval.bootstrap_resamples = 50
  config.eval.update(eval_options)
  return config


@pytest.mark.parametrize('engine', ['exact', 'histogram'])
def test_the_report_measures_validation_thresholds_on_the_test_split(
    engine, tmp_path):
  # With the one-pass engine, one pass without a cut serves it all.
  config = _config(fars=(1e-3, 1e-2, 1e-1), target_far=0.05, engine=engine)
  inputs = inputs_lib.create_inputs(config)
  z, labels = clustered_set(0, [30] * 10, dim=10)
  z_val, labels_val = clustered_set(1, [25] * 6, dim=10, spread=0.8)
  final = evaluator.final_evaluation(config, str(tmp_path), z, labels,
                                     tcm_margins=None,
                                     calibration=(z_val, labels_val))
  assert (final.evaluation.histograms is not None) == (engine == 'histogram')
  evaluator.write_final_report(config, str(tmp_path), inputs, inputs.test,
                               10, final)
  written = json.loads((tmp_path / 'metrics.json').read_text())
  points = metrics.operating_points(z, labels, fars=(1e-3, 1e-2, 1e-1),
                                    target_far=0.05)
  assert written['operating_points'] == json.loads(json.dumps(
      points.to_dict()))
  transfer = metrics.calibration_transfer(z, labels, z_val, labels_val,
                                          target_fars=(1e-3, 1e-2, 1e-1))
  assert written['calibration_transfer'] == json.loads(json.dumps(
      transfer.to_dict()))
  intervals = advanced.operating_point_intervals(
      advanced.pair_histograms(advanced.source_from_embeddings(z, labels)),
      fars=(1e-3, 1e-2, 1e-1), target_far=0.05, num_resamples=50, seed=0)
  saved = written['bootstrap']['intervals']
  for name in ('eer', 'auc', 'global_threshold', 'tar_at_0.01'):
    assert saved[name]['low'] == intervals[name].low, name
    assert saved[name]['high'] == intervals[name].high, name
  assert 'opis' in saved  # beside the class bootstrap's own
  report = (tmp_path / 'report.md').read_text()
  assert '## Verification over all pairs' in report
  assert '## Calibration transfer from the validation classes' in report
  eer = intervals['eer']
  assert f'EER {points.eer:.4f} [{eer.low:.4g}, {eer.high:.4g}]' in report
  for name in ('det_curve.png', 'class_rates.png',
               'calibration_transfer.png'):
    assert (tmp_path / name).stat().st_size > 0


def test_no_fars_no_verification(tmp_path):
  config = _config(fars=())
  inputs = inputs_lib.create_inputs(config)
  z, labels = clustered_set(2, [20] * 8, dim=10)
  final = evaluator.final_evaluation(config, str(tmp_path), z, labels,
                                     tcm_margins=None,
                                     calibration=(z[:60], labels[:60]))
  assert final.verification is None
  evaluator.write_final_report(config, str(tmp_path), inputs, inputs.test,
                               10, final)
  written = json.loads((tmp_path / 'metrics.json').read_text())
  assert 'operating_points' not in written
  assert 'eer' not in written['bootstrap']['intervals']
  assert not (tmp_path / 'det_curve.png').exists()
