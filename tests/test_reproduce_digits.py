"""scripts/reproduce_digits.py: a tiny study end to end, its report, errors."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'reproduce_digits', REPO / 'scripts' / 'reproduce_digits.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


reproduce = _load_script()

LOSSES = ('contrastive', 'arcface')  # one pair-based, one proxy-based


def _argv(tmp_path, *extra):
  # 30 steps at 8 px: after 10 the proxy losses' embeddings still lie too
  # close together to calibrate a threshold range; 20 were enough, 30 leave
  # a margin.
  return ['--workdir', str(tmp_path / 'runs'), '--losses', *LOSSES,
          '--seeds', '1', '--steps', '30', '--image_size', '8', '--no-sweep',
          '--out', str(tmp_path / 'REPRODUCTION.md'),
          '--figure', str(tmp_path / 'figure.png'),
          '--compilation_cache', '', *extra]


def _row(text, loss, label):
  """The cells of the table row of `loss` without/with TCM."""
  rows = [line for line in text.splitlines()
          if line.startswith(f'| {loss} | {label} |')]
  assert len(rows) == 1, (loss, label, rows)
  return [cell.strip() for cell in rows[0].strip('|').split('|')]


@pytest.mark.slow
def test_tiny_study_reports_the_runs_metrics_and_reuses_them(
    tmp_path, capsys, monkeypatch):
  reproduce.main(_argv(tmp_path))
  printed = capsys.readouterr().out
  assert '4 to train, 0 finished already' in printed
  assert [line[:7] for line in printed.splitlines() if line.startswith('[')
          ] == ['[  1/4]', '[  2/4]', '[  3/4]', '[  4/4]']

  text = (tmp_path / 'REPRODUCTION.md').read_text()
  assert 'python scripts/reproduce_digits.py --workdir' in text
  assert '30 steps' in text and '8 px' in text
  assert (tmp_path / 'figure.png').stat().st_size > 1000
  assert '](figure.png)' in text  # relative to the markdown's folder
  for loss in LOSSES:
    opis = {}
    for variant, label in (('base', 'without'), ('tcm', 'with')):
      with open(tmp_path / 'runs' / f'{loss}-{variant}-seed0' /
                'metrics.json') as f:
        metrics = json.load(f)
      cells = _row(text, loss, label)
      assert cells[2:6] == [f'{metrics["recall_at_k"]["1"]:.4f}',
                            f'{metrics["map_at_r"]:.4f}',
                            f'{metrics["opis"]:.5f}',
                            f'{metrics["eps_opis"]:.5f}']
      opis[variant] = metrics['opis']
    change = 100 * (opis['tcm'] - opis['base']) / opis['base']
    assert _row(text, loss, 'with')[6] == f'{change:+.1f}%'

  # Again: every run is read back, none trained.
  def no_training(*args, **kwargs):
    raise AssertionError('a finished run was trained again')
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', no_training)
  (tmp_path / 'REPRODUCTION.md').unlink()
  reproduce.main(_argv(tmp_path))
  printed = capsys.readouterr().out
  assert '0 to train, 4 finished already' in printed
  assert printed.count('read back, not retrained') == 4
  assert (tmp_path / 'REPRODUCTION.md').read_text().split('## Results')[1] == (
      text.split('## Results')[1])


def test_an_unknown_loss_is_a_clear_error(capsys):
  with pytest.raises(SystemExit) as raised:
    reproduce.main(['--losses', 'contrastive', 'arcfce'])
  assert raised.value.code == 2
  error = capsys.readouterr().err
  assert "unknown loss 'arcfce'" in error
  for name in reproduce.registered_losses():
    assert name in error


@pytest.mark.parametrize('flag, value', [('--seeds', '0'), ('--steps', '0'),
                                         ('--image_size', '4')])
def test_bad_numbers_are_clear_errors(flag, value, capsys):
  with pytest.raises(SystemExit):
    reproduce.main([flag, value])
  assert f'{flag} must be at least' in capsys.readouterr().err


def test_a_run_of_another_budget_is_not_read_back(tmp_path):
  base = reproduce.base_config(steps=30, image_size=8)
  spec = reproduce.RunSpec('contrastive', True, 0)
  config = reproduce.run_config(base, spec)
  saved = reproduce.checkpoint_lib.json_safe(config.to_dict())
  path = tmp_path / 'result.json'
  path.write_text(json.dumps({'config': saved, 'metrics': {}}))
  assert reproduce.read_result(str(path), saved)['config'] == saved
  other = reproduce.run_config(reproduce.base_config(steps=40, image_size=8),
                               spec)
  with pytest.raises(ValueError, match='train.num_steps'):
    reproduce.read_result(
        str(path), reproduce.checkpoint_lib.json_safe(other.to_dict()))


def test_run_configs_share_the_budget_and_differ_in_the_run():
  base = reproduce.base_config(steps=100, image_size=12)
  assert base.train.num_steps == 100 and base.input.image_size == 12
  # configs/digits.py decays at epochs 15 and 22 of 27; 100 steps are 100/11
  # epochs of 11 steps.
  np.testing.assert_allclose(base.optimizer.milestones,
                             [15 / 27 * 100 / 11, 22 / 27 * 100 / 11],
                             rtol=1e-5)
  spec = reproduce.RunSpec('triplet', True, 3, (0.8, 0.3))
  config = reproduce.run_config(base, spec)
  assert (config.loss.name, config.loss.tcm.enabled, config.seed) == (
      'triplet', True, 3)
  assert (config.loss.tcm.margin_pos, config.loss.tcm.margin_neg) == (0.8, 0.3)
  assert config.loss.hyper.to_dict() == {}  # the registry's defaults
  assert spec.name == 'triplet-tcm_mp0.8_mn0.3-seed3'
  assert base.loss.tcm.margin_pos == 0.9  # the base is left as it was


def _fake_results(losses, seeds, opis, recall):
  """result.json contents for every study and sweep run, from two functions
  of (loss, spec) giving OPIS and Recall@1."""
  specs = (reproduce.study_specs(losses, seeds)
           + reproduce.sweep_specs(losses, seeds, reproduce.SWEEP_MARGINS))
  results = {}
  for spec in dict.fromkeys(specs):
    metrics = dict(recall_at_1=recall(spec), map_at_r=0.4,
                   opis=opis(spec), eps_opis=2 * opis(spec))
    results[spec] = dict(metrics=metrics, seconds=10.0)
  return results


def test_summary_counts_losses_and_marks_changes_beyond_noise():
  losses = ['contrastive', 'triplet', 'arcface']
  # TCM halves OPIS for contrastive and triplet, doubles it for arcface;
  # Recall@1 moves by less than its noise.
  factor = {'contrastive': 0.5, 'triplet': 0.5, 'arcface': 2.0}
  results = _fake_results(
      losses, 3,
      lambda s: 0.02 * (factor[s.loss] if s.tcm else 1) * (1 + 0.05 * s.seed),
      lambda s: 0.8 + 0.01 * s.seed + (0.001 if s.tcm else 0))
  summaries = reproduce.summarise(results, losses, range(3))
  assert [round(s.opis_change, 6) for s in summaries] == [-50, -50, 100]
  table = '\n'.join(reproduce.results_table(summaries))
  assert '| contrastive | with |' in table and '-50.0% *' in table
  assert '+100.0% *' in table and '+0.10 pt |' in table  # no star: noise
  paragraph = reproduce.summary_paragraph(summaries)
  assert 'lowered the mean OPIS for 2 of 3 base losses' in paragraph
  assert 'for 2 (contrastive, triplet)' in paragraph
  assert 'rose beyond it for 1 (arcface)' in paragraph
  assert reproduce.helped(summaries)


def test_report_with_sweep_is_written_from_results(tmp_path):
  losses = ['smooth_ap', 'arcface']
  margin_effect = {None: 0.8, (0.8, 0.5): 1.2, (0.7, 0.5): 1.0,
                   (0.6, 0.5): 0.6}
  results = _fake_results(
      losses, 2,
      lambda s: 0.02 * (margin_effect[s.margins] if s.tcm else 1)
      + 0.001 * s.seed,
      lambda s: 0.85 + 0.01 * s.seed)
  args = reproduce.parse_args(
      ['--workdir', str(tmp_path / 'runs'), '--losses', *losses, '--seeds',
       '2', '--sweep_losses', *losses, '--sweep_seeds', '2',
       '--sweep_margins', '0.8,0.5', '0.7,0.5', '0.6,0.5', '--out',
       str(tmp_path / 'R.md'), '--figure', str(tmp_path / 'docs' / 'f.png')])
  base = reproduce.base_config(steps=100, image_size=12)
  text = reproduce.write_report(args, 'python scripts/reproduce_digits.py',
                                base, results, trained=0, wall_seconds=60.0)
  assert text == (tmp_path / 'R.md').read_text()
  assert (tmp_path / 'docs' / 'f.png').exists()
  assert '](docs/f.png)' in text
  assert '## Margin sweep' in text
  assert '| smooth_ap | 0.6 | 0.5 |' in text
  assert 'smooth_ap at m+ 0.6, m- 0.5 (-39.0% *' in text
  assert 'TCM lowered the mean OPIS for most base losses' in text
  # Every run's row, by folder name.
  assert text.count('| smooth_ap-tcm_mp0.6_mn0.5-seed1 |') == 1


def test_doctests():
  import doctest  # pylint: disable=import-outside-toplevel
  assert doctest.testmod(reproduce).failed == 0
