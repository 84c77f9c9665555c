"""scripts/reproduce.py: a tiny study end to end, resuming, its statistics.

The study trains for real only in the module's `study` fixture (8 runs of
3 steps on configs/digits_open.py, shared by the tests marked slow); the
other tests use hand-made results or a stand-in for the training.
"""

import contextlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from tcm_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / 'configs' / 'digits_open.py')


# Registered in sys.modules: its dataclasses look their module up.
reproduce = config_lib.load_module(str(REPO / 'scripts' / 'reproduce.py'),
                                   'reproduce', register=True)

# One loss (the trainer's tests train the proxy losses with TCM's margins as
# step arguments too): 4 runs.
LOSSES = ('contrastive',)
# The paper's margins are the trainer's plain TCM path, tested there.
VARIANTS = ('none', 'data')
SEEDS = 2


def _study_argv(root, *extra):
  return ['--config', CONFIG, '--regimes', 'scratch', '--losses', *LOSSES,
          '--seeds', str(SEEDS), '--steps', '3', '--margin_every', '2',
          '--variants', *VARIANTS,
          '--curves_loss', LOSSES[-1],  # a loss of the study: both figures
          '--workdir', str(root / 'runs'),
          '--out', str(root / 'REPRODUCTION.md'),
          '--figures', str(root / 'docs'), *extra]


def _run_names():
  return [f'scratch/{loss}-{variant}-seed{seed}' for loss in LOSSES
          for variant in VARIANTS for seed in range(SEEDS)]


def _main(argv):
  """`reproduce.main(argv)` and what it printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    reproduce.main(argv)
  return printed.getvalue()


def _table_lines(text):
  return [line for line in text.splitlines() if line.startswith('|')]


def _row(text, loss, variant):
  """The cells of the regime table's row of `loss` in `variant`."""
  label = reproduce.VARIANT_NAMES[variant]
  rows = [line for line in text.splitlines()
          if line.startswith(f'| {loss} | {label} |')]
  assert len(rows) == 1, (loss, variant, rows)
  return [cell.strip() for cell in rows[0].strip('|').split('|')]


def _copy_runs(study, tmp_path):
  """A copy of the study's run folders (without the compilation cache)."""
  root = tmp_path / 'copy'
  shutil.copytree(study.root / 'runs', root / 'runs', ignore=(
      shutil.ignore_patterns('jax_cache', 'checkpoints', 'tensorboard')))
  return root


def _no_training(*args, **kwargs):
  raise AssertionError('a run was trained')


@pytest.fixture(scope='module', autouse=True)
def _jax_cache_settings():
  """`main` points JAX's persistent compilation cache at its workdir: put the
  settings back for the tests after this module."""
  saved = {name: getattr(jax.config, name) for name in (
      'jax_compilation_cache_dir',
      'jax_persistent_cache_min_compile_time_secs')}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """The tiny study, trained once for the module."""
  root = tmp_path_factory.mktemp('study')
  argv = _study_argv(root)
  printed = _main(argv)
  results = {}
  for name in _run_names():
    path = root / 'runs' / name / 'result.json'
    results[name] = json.loads(path.read_text()) if path.exists() else None
  return types.SimpleNamespace(
      root=root, argv=argv, printed=printed,
      text=(root / 'REPRODUCTION.md').read_text(), results=results)


# --- The tiny study --------------------------------------------------------------


@pytest.mark.slow
def test_study_trains_every_run_in_its_folder_with_its_config(study):
  # In the order of study_runs: a loss's variants and seeds together.
  printed = [line for line in study.printed.splitlines()
             if line.startswith('[')]
  assert [line.split()[2] for line in printed] == _run_names()
  n = len(_run_names())
  assert [line.split(']')[0] + ']' for line in printed] == [
      f'[{i:3d}/{n}]' for i in range(1, n + 1)]
  assert all(' s, ETA ' in line for line in printed)  # trained, not read
  for name, result in study.results.items():
    assert result is not None, f'{name}/result.json is missing'
    loss, variant, seed = re.fullmatch(r'scratch/(\w+)-(\w+)-seed(\d)',
                                       name).groups()
    assert (result['regime'], result['loss'], result['variant'],
            result['seed']) == ('scratch', loss, variant, int(seed))
    config = result['config']
    assert config['seed'] == int(seed)
    assert config['loss']['name'] == loss
    assert config['loss']['tcm']['enabled'] == (variant != 'none')
    assert (config['loss']['tcm']['margin_pos'],
            config['loss']['tcm']['margin_neg']) == (0.9, 0.5)
    from_data = config['loss']['tcm_from_data']
    assert from_data['enabled'] == (variant == 'data')
    assert from_data['every_steps'] == 2
    assert (from_data['hard_pos_fraction'],
            from_data['hard_neg_fraction']) == (0.2, 0.01)
    assert config['train']['num_steps'] == 3
    assert config['pretrained'] == ''
    assert config['dataset']['train_side'] == 'train'
    assert config['eval']['final_split'] == 'test'
    assert set(result['metrics']) >= {k for k, _, _ in reproduce.METRICS}
    assert result['bootstrap']['intervals']['opis']['low'] <= (
        result['metrics']['opis'])


@pytest.mark.slow
def test_margins_from_data_are_estimated_every_margin_every_steps(study):
  for name, result in study.results.items():
    estimates = result['tcm_margins']
    pairs = result['tcm_pairs']
    if '-data-' not in name:
      assert estimates == [], name
      assert (pairs['margin_pos'], pairs['margin_neg']) == (0.9, 0.5)
      continue
    # Before the first step, then at step 2 of 3 (not at the last step).
    assert [e['step'] for e in estimates] == [0, 2], name
    for e in estimates:
      assert all(math.isfinite(e[k]) for k in ('margin_pos', 'margin_neg'))
    # The test metrics count hard pairs at the last estimate.
    assert (pairs['margin_pos'], pairs['margin_neg']) == pytest.approx(
        (estimates[-1]['margin_pos'], estimates[-1]['margin_neg']))


@pytest.mark.slow
def test_report_tables_come_from_the_results(study):
  text = study.text
  assert '**Partial:**' not in text
  assert f'- Command: `python scripts/reproduce.py {" ".join(study.argv)}`' in (
      text)
  means = {}
  for loss in LOSSES:
    for variant in VARIANTS:
      cell = [study.results[f'scratch/{loss}-{variant}-seed{s}']
              for s in range(SEEDS)]
      stats = {key: reproduce.Stat.of([r['metrics'][key] for r in cell])
               for key in ('recall_at_1', 'opis')}
      means[loss, variant] = stats
      cells = _row(text, loss, variant)
      assert cells[2] == stats['recall_at_1'].format(4)
      assert ' ± ' in cells[2]  # two seeds
      assert cells[4] == stats['opis'].format(5)
      if variant == 'none':
        assert cells[-2:] == ['', '']
      else:
        without = means[loss, 'none']
        change = 100 * (stats['opis'].mean - without['opis'].mean) / (
            without['opis'].mean)
        points = 100 * (stats['recall_at_1'].mean
                        - without['recall_at_1'].mean)
        assert cells[-2].startswith(f'{change:+.1f}%'), cells
        assert cells[-1].startswith(f'{points:+.2f} pt'), cells
  # The summary sentence, one per TCM variant, with the counts of the table.
  for variant in VARIANTS[1:]:
    lower = sum(means[loss, variant]['opis'].mean
                < means[loss, 'none']['opis'].mean for loss in LOSSES)
    assert (f'{reproduce.VARIANT_PHRASES[variant]}, TCM lowered the mean OPIS '
            f'for {lower} of {len(LOSSES)} base losses (median change') in text


@pytest.mark.slow
def test_report_lists_every_run_with_its_bootstrap_intervals(study):
  every_run = study.text.split('## Every run')[1]
  for name, result in study.results.items():
    metrics, intervals = result['metrics'], result['bootstrap']['intervals']
    cells = []
    for key, digits in (('recall_at_1', 4), ('opis', 5), ('eps_opis', 5)):
      low, high = intervals[key]['low'], intervals[key]['high']
      cells.append(f'{metrics[key]:.{digits}f} '
                   f'[{low:.{digits}f}, {high:.{digits}f}]')
    assert f'| {name} | {" | ".join(cells)} |' in every_run, name


@pytest.mark.slow
def test_report_links_both_figures(study):
  out_folder = study.root
  links = re.findall(r'!\[[^]]*\]\(([^)]+)\)', study.text)
  figures = [study.root / 'docs' / 'reproduction_digits_open_scratch.png',
             study.root / 'docs' / 'reproduction_digits_open_scratch_curves.png']
  for figure in figures:
    assert figure.stat().st_size > 1000
  # Each link resolves from the report's own folder.
  assert sorted(os.path.realpath(out_folder / link) for link in links) == (
      sorted(os.path.realpath(f) for f in figures))


# --- Resuming --------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_invocation_reads_every_run_back(study, monkeypatch):
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', _no_training)
  printed = _main(study.argv)
  assert printed.count('read back') == len(_run_names())
  text = (study.root / 'REPRODUCTION.md').read_text()
  assert _table_lines(text) == _table_lines(study.text)
  assert '**Partial:**' not in text


@pytest.mark.slow
def test_report_only_reports_the_finished_runs_as_partial(
    study, tmp_path, monkeypatch):
  root = _copy_runs(study, tmp_path)
  (root / 'runs' / 'scratch' / 'contrastive-data-seed1' / 'result.json'
   ).unlink()
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', _no_training)
  printed = _main(_study_argv(root, '--report_only'))
  assert printed.count('read back') == len(_run_names()) - 1
  text = (root / 'REPRODUCTION.md').read_text()
  assert (
      f'**Partial:** {len(_run_names()) - 1} of {len(_run_names())} runs are '
      'finished') in text
  assert '--report_only' not in text  # the command remakes the whole study
  # The cell with one seed left has no standard deviation.
  seed0 = study.results['scratch/contrastive-data-seed0']['metrics']
  assert _row(text, 'contrastive', 'data')[2] == (
      f'{seed0["recall_at_1"]:.4f}')
  assert _row(text, 'contrastive', 'none') == _row(study.text, 'contrastive',
                                                   'none')
  assert '| scratch/contrastive-data-seed0 |' in text
  assert '| scratch/contrastive-data-seed1 |' not in text


@pytest.mark.slow
def test_max_minutes_0_trains_at_most_the_first_run(
    study, tmp_path, monkeypatch):
  root = _copy_runs(study, tmp_path)
  first, last = _run_names()[0], _run_names()[-1]
  for name in (first, last):
    (root / 'runs' / name / 'result.json').unlink()
  trained = []

  def fake_train_run(run, config, run_dir, pretrained_from=None):
    del config, run_dir, pretrained_from
    trained.append(run.name)
    return study.results[run.name]
  monkeypatch.setattr(reproduce, 'train_run', fake_train_run)
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', _no_training)
  _main(_study_argv(root, '--max_minutes', '0'))
  assert trained in ([], [first])
  text = (root / 'REPRODUCTION.md').read_text()
  n = len(_run_names())
  assert f'**Partial:** {n - 2 + len(trained)} of {n} runs' in text
  assert '--max_minutes' not in text
  assert f'| {last} |' not in text


@pytest.mark.slow
@pytest.mark.parametrize('extra, key', [
    (('--steps', '4'), 'train.num_steps'),
    (('--hard_pos_fraction', '0.3'), 'loss.tcm_from_data.hard_pos_fraction'),
])
def test_another_config_against_the_workdir_is_an_error(
    study, monkeypatch, extra, key):
  monkeypatch.setattr(reproduce.train, 'train_and_evaluate', _no_training)
  with pytest.raises(ValueError, match=re.escape(key)) as raised:
    _main(study.argv + list(extra))
  assert 'use another --workdir' in str(raised.value)


# --- Runs and their configs ------------------------------------------------------

# configs/digits_open.py: the 901 training images of digits 0-4 in batches of
# 5 x 16 are round(901 / 80) = 11 steps an epoch; 27 epochs, milestones at
# epochs 15 and 22. A run of S steps decays at epochs 15/27 * S/11 and
# 22/27 * S/11 (milestones are in epochs of the run's training side).
STEPS_PER_EPOCH = 11


def _milestones(steps):
  return (15 / 27 * steps / STEPS_PER_EPOCH, 22 / 27 * steps / STEPS_PER_EPOCH)


def _args(tmp_path, *extra):
  return reproduce.parse_args(
      ['--config', CONFIG, '--workdir', str(tmp_path / 'runs'),
       '--losses', *LOSSES, '--seeds', '2', '--steps', '30',
       '--finetune_steps', '20', '--pretrain_steps', '50',
       '--finetune_lr_scale', '0.25', '--margin_every', '7', *extra])


def test_milestones_stay_at_the_configs_fractions(tmp_path):
  base = reproduce.base_config(_args(tmp_path))
  assert reproduce.inputs_lib.create_inputs(base).steps_per_epoch == (
      STEPS_PER_EPOCH)
  assert tuple(base.optimizer.milestones) == (15, 22)
  for steps in (3, 30, 297, 1000):
    np.testing.assert_allclose(reproduce._milestones_at(base, base, steps),  # pylint: disable=protected-access
                               _milestones(steps), atol=1e-6)
  # A run as long as the config's own keeps its milestones.
  np.testing.assert_allclose(reproduce._milestones_at(base, base, 27 * 11),  # pylint: disable=protected-access
                             (15, 22))


def test_study_runs_put_each_regimes_pretraining_first(tmp_path):
  runs = reproduce.study_runs(_args(tmp_path, '--regimes', 'scratch',
                                    'finetune', '--variants', 'none', 'data'))
  names = [run.name for run in runs]
  scratch = [f'scratch/{loss}-{variant}-seed{seed}' for loss in LOSSES
             for variant in ('none', 'data') for seed in range(2)]
  assert names == scratch + [
      'finetune/pretrain-seed0', 'finetune/pretrain-seed1',
      *(name.replace('scratch/', 'finetune/') for name in scratch)]
  assert [r.name for r in reproduce.study_runs(
      _args(tmp_path, '--regimes', 'scratch', '--variants', *VARIANTS))
         ] == _run_names()


def test_run_all_gives_every_run_its_config(tmp_path, monkeypatch):
  """Both regimes, with the training replaced by a recorder."""
  args = _args(tmp_path)
  base = reproduce.base_config(args)
  base_before = base.to_dict()
  trained = []
  # digits has no pretrain side: as if it had one, 3x the size of train.
  monkeypatch.setattr(reproduce, '_steps_per_epoch', lambda config: {
      'train': STEPS_PER_EPOCH, 'pretrain': 3 * STEPS_PER_EPOCH}[
          config.dataset.train_side])

  def fake_train_run(run, config, run_dir, pretrained_from=None):
    del pretrained_from
    trained.append((run, config, run_dir))
    return dict(metrics=dict(recall_at_1=0.5, opis=0.01), seconds=1.0)
  monkeypatch.setattr(reproduce, 'train_run', fake_train_run)
  with contextlib.redirect_stdout(io.StringIO()):
    results, complete = reproduce.run_all(args, base)
  assert complete and len(results) == 2 + 2 * len(LOSSES) * 3 * 2
  assert [run for run, _, _ in trained] == reproduce.study_runs(args)
  assert trained[0][0].name == 'finetune/pretrain-seed0'
  assert base.to_dict() == base_before  # every run's config is a copy
  workdir = str(tmp_path / 'runs')
  for run, config, run_dir in trained:
    assert run_dir == os.path.join(workdir, run.name)
    assert config.seed == run.seed
    if run.loss == 'pretrain':
      assert config.dataset.train_side == 'pretrain'
      assert config.eval.final_split == 'val'
      assert config.loss.name == 'multi_similarity'  # --pretrain_loss
      assert not config.loss.tcm.enabled
      assert not config.loss.tcm_from_data.enabled
      assert config.train.num_steps == 50
      assert config.optimizer.learning_rate == pytest.approx(1e-3)
      np.testing.assert_allclose(  # in epochs of the pretrain side
          config.optimizer.milestones, np.divide(_milestones(50), 3),
          atol=1e-6)
      assert config.pretrained == ''
      continue
    assert config.dataset.train_side == 'train'
    assert config.eval.final_split == 'test'
    assert config.loss.name == run.loss
    assert config.loss.tcm.enabled == (run.variant != 'none')
    assert config.loss.tcm_from_data.enabled == (run.variant == 'data')
    assert (config.loss.tcm.margin_pos, config.loss.tcm.margin_neg) == (
        0.9, 0.5)
    if run.regime == 'finetune':
      assert config.pretrained == os.path.join(
          workdir, 'finetune', f'pretrain-seed{run.seed}')
      assert config.train.num_steps == 20
      assert config.optimizer.learning_rate == pytest.approx(0.25e-3)
      assert config.loss.tcm_from_data.every_steps == 0  # once, at the start
      np.testing.assert_allclose(config.optimizer.milestones, _milestones(20),
                                 atol=1e-6)
    else:
      assert config.pretrained == ''
      assert config.train.num_steps == 30
      assert config.optimizer.learning_rate == pytest.approx(1e-3)
      assert config.loss.tcm_from_data.every_steps == 7  # --margin_every
      np.testing.assert_allclose(config.optimizer.milestones, _milestones(30),
                                 atol=1e-6)


def test_pretraining_milestones_are_in_epochs_of_the_pretrain_side(
    tmp_path, monkeypatch):
  args = _args(tmp_path)
  base = reproduce.base_config(args)
  per_epoch = {'train': 11, 'pretrain': 33}  # as if its side were 3x larger
  monkeypatch.setattr(reproduce, '_STEPS_PER_EPOCH', {})
  monkeypatch.setattr(reproduce.inputs_lib, 'create_inputs', lambda config: (
      types.SimpleNamespace(
          steps_per_epoch=per_epoch[config.dataset.train_side])))
  config = reproduce.run_config(
      base, reproduce.Run('finetune', 'pretrain', 'none', 0), args)
  # Decays at 15/27 and 22/27 of the 50 steps: epochs of 33 steps.
  np.testing.assert_allclose(
      np.asarray(config.optimizer.milestones) * 33,
      (15 / 27 * 50, 22 / 27 * 50), rtol=1e-5)


# --- Statistics ------------------------------------------------------------------


def test_stat_of_is_the_mean_and_sample_std():
  s = reproduce.Stat.of([1.0, 2.0, 6.0])
  assert (s.mean, s.n) == (3.0, 3)
  assert s.std == pytest.approx(math.sqrt(7.0))  # (4 + 1 + 9) / 2
  assert s.format(2) == '3.00 ± 2.65'
  one = reproduce.Stat.of([0.25])
  assert (one.mean, one.std, one.n) == (0.25, 0.0, 1)
  assert one.format(3) == '0.250'


def test_clear_change_is_beyond_twice_the_standard_error():
  stat = reproduce.Stat
  # Standard error of the difference: sqrt(1/4 + 1/4) = 0.7071; twice: 1.414.
  assert reproduce.clear_change(stat(0.0, 1.0, 4), stat(1.5, 1.0, 4))
  assert reproduce.clear_change(stat(0.0, 1.0, 4), stat(-1.5, 1.0, 4))
  assert not reproduce.clear_change(stat(0.0, 1.0, 4), stat(1.4, 1.0, 4))
  # Unequal spreads: sqrt(0.09/3 + 0.16/2) = 0.3317; twice: 0.663.
  assert reproduce.clear_change(stat(1.0, 0.3, 3), stat(1.7, 0.4, 2))
  assert not reproduce.clear_change(stat(1.0, 0.3, 3), stat(1.6, 0.4, 2))
  # No spread: any difference is clear, none is not.
  assert reproduce.clear_change(stat(1.0, 0.0, 2), stat(1.001, 0.0, 2))
  assert not reproduce.clear_change(stat(1.0, 0.0, 2), stat(1.0, 0.0, 2))
  # One seed a side tells nothing.
  assert not reproduce.clear_change(stat(0.0, 0.0, 1), stat(9.0, 0.0, 5))
  assert not reproduce.clear_change(stat(0.0, 0.1, 5), stat(9.0, 0.0, 1))


# Hand-made results, three seeds: (OPIS, R@1) per seed, per loss and variant.
_LOW = [0.010, 0.011, 0.012]
_BASE = [0.020, 0.021, 0.022]
_RECALL = [0.80, 0.81, 0.82]
HAND = {
    # OPIS clearly lower at an equal R@1.
    'contrastive': {'none': (_BASE, _RECALL), 'paper': (_LOW, _RECALL),
                    'data': (_LOW, _RECALL)},
    # OPIS clearly lower, R@1 clearly lower too (10 points).
    'triplet': {'none': (_BASE, _RECALL),
                'paper': (_LOW, [0.70, 0.71, 0.72])},
    # OPIS clearly higher (doubled); unchanged with the margins from data.
    'arcface': {'none': (_BASE, _RECALL),
                'paper': ([0.041, 0.042, 0.043], _RECALL),
                'data': (_BASE, _RECALL)},
    # OPIS 5% lower and R@1 half a point lower, both within their noise.
    'multi_similarity': {'none': ([0.01, 0.02, 0.03], _RECALL),
                         'paper': ([0.009, 0.019, 0.029],
                                   [0.795, 0.805, 0.815])},
}


def _hand_results():
  results = {}
  for loss, variants in HAND.items():
    for variant, (opis, recall) in variants.items():
      for seed in range(3):
        metrics = dict(recall_at_1=recall[seed], map_at_r=0.4,
                       opis=opis[seed], eps_opis=2 * opis[seed],
                       mean_utility=0.5, mean_tpr=0.6)
        pairs = dict(margin_pos=0.9, margin_neg=0.5, hard_pos_fraction=0.2,
                     hard_neg_fraction=0.01)
        results[reproduce.Run('scratch', loss, variant, seed)] = dict(
            metrics=metrics, tcm_pairs=pairs, seconds=1.0, num_classes=100,
            num_images=1000)
  return results


def test_comparisons_tell_which_losses_tcm_helped():
  found = reproduce.comparisons(_hand_results(), 'scratch', list(HAND),
                                'paper')
  assert [c.loss for c in found] == list(HAND)
  assert [round(c.change('opis'), 3) for c in found] == [
      -47.619, -47.619, 100.0, -5.0]
  assert [round(c.points('recall_at_1'), 6) for c in found] == [
      0, -10, 0, -0.5]
  assert [c.lowers_opis for c in found] == [True, True, False, False]
  assert [c.equal_recall for c in found] == [True, False, True, True]
  # Only the losses with runs of both variants.
  assert [c.loss for c in reproduce.comparisons(
      _hand_results(), 'scratch', list(HAND), 'data')] == [
          'contrastive', 'arcface']
  assert reproduce.comparisons(_hand_results(), 'finetune', list(HAND),
                               'paper') == []


def test_regime_summary_counts_from_the_numbers(tmp_path):
  args = reproduce.parse_args(['--config', CONFIG, '--losses', *HAND,
                               '--seeds', '3', '--regimes', 'scratch',
                               '--workdir', str(tmp_path)])
  results = _hand_results()
  summary = reproduce.regime_summary(results, 'scratch', args)
  paper, data = summary.split(reproduce.VARIANT_PHRASES['data'])
  # Paper margins: lower for contrastive, triplet and multi_similarity
  # (median of -47.6, -47.6, -5 and +100: -26.3); beyond the uncertainty for
  # contrastive and triplet, of which only contrastive kept its R@1 (that
  # of multi_similarity fell within its noise: median of 0, -10, 0, -0.5).
  for part in ('TCM lowered the mean OPIS for 3 of 4 base losses',
               'median change -26.3%, from -47.6% to +100.0%',
               'beyond its uncertainty for 2 (contrastive, triplet)',
               '1 of them at a Recall@1 and a mean utility not lower beyond '
               'their uncertainty (contrastive)',
               '0 with the mean utility lower beyond it',
               'OPIS rose beyond it for 1 (arcface)',
               'by -0.25 points in the median (from -10.00 to +0.00)',
               'it fell beyond its uncertainty for 1 (triplet)'):
    assert part in paper, (part, paper)
  for part in ('TCM lowered the mean OPIS for 1 of 2 base losses',
               'median change -23.8%, from -47.6% to +0.0%',
               'beyond its uncertainty for 1 (contrastive)',
               '1 of them at a Recall@1 and a mean utility not lower beyond '
               'their uncertainty (contrastive)',
               'OPIS rose beyond it for 0 (none)',
               'it fell beyond its uncertainty for 0 (none)'):
    assert part in data, (part, data)
  assert reproduce.conclusion_lines(results, args)[2:] == [
      '| scratch | paper | 4 | 3 | 1 | 0 | 1 | 1 | 0 |',
      '| scratch | data | 2 | 1 | 1 | 0 | 0 | 0 | 0 |']


def test_a_lower_opis_with_a_lower_mean_utility_is_no_win(tmp_path):
  # A model that accepts little for every class has a low OPIS too: with
  # the mean utility lower beyond its noise, the lower OPIS is not counted
  # as more consistent.
  args = reproduce.parse_args(['--config', CONFIG, '--losses', *HAND,
                               '--seeds', '3', '--regimes', 'scratch',
                               '--workdir', str(tmp_path)])
  results = _hand_results()
  for run, r in results.items():
    if (run.loss, run.variant) == ('contrastive', 'paper'):
      r['metrics']['mean_utility'] = 0.3 + 0.01 * run.seed
  contrastive = reproduce.comparisons(results, 'scratch', ['contrastive'],
                                      'paper')[0]
  assert contrastive.lowers_opis and contrastive.equal_recall
  assert contrastive.lower('mean_utility') and not contrastive.consistent_win
  summary = reproduce.regime_summary(results, 'scratch', args)
  assert ('0 of them at a Recall@1 and a mean utility not lower beyond '
          'their uncertainty (none) and 1 with the mean utility lower beyond '
          'it, a uniformly poorer model rather than a more consistent one '
          '(contrastive)') in summary, summary
  assert reproduce.conclusion_lines(results, args)[2] == (
      '| scratch | paper | 4 | 3 | 0 | 1 | 1 | 1 | 0 |')


# --- The command line ------------------------------------------------------------


def test_bad_arguments_are_one_line_errors_without_traceback():
  cases = {'--losses': ['--losses', 'nope'], '--seeds': ['--seeds', '0'],
           '--hard_pos_fraction': ['--hard_pos_fraction', '1.5']}
  processes = {flag: subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, 'scripts/reproduce.py', '--config',
       'configs/digits_open.py', *argv], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for flag, argv in cases.items()}
  errors = {}
  for flag, process in processes.items():
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0, flag
    assert 'Traceback' not in err, err
    assert out == ''
    # Under argparse's usage, the error: one line, the last.
    lines = [line for line in err.splitlines() if 'error' in line]
    assert lines == [err.splitlines()[-1]], err
    assert lines[0].startswith(f'reproduce.py: error: {flag}'), err
    errors[flag] = lines[0]
  assert "unknown ['nope']" in errors['--losses']
  assert 'got 0' in errors['--seeds']
  assert 'got 1.5' in errors['--hard_pos_fraction']


def test_doctests():
  import doctest  # pylint: disable=import-outside-toplevel
  assert doctest.testmod(reproduce).failed == 0


def test_a_fine_tuning_run_of_another_pretraining_is_refused(tmp_path):
  args = _args(tmp_path)
  base = reproduce.base_config(args)
  run = reproduce.Run('scratch', 'contrastive', 'none', 0)
  config = reproduce.run_config(base, run, args)
  path = tmp_path / 'result.json'
  path.write_text(json.dumps({'config': reproduce.checkpoint_lib.json_safe(
      config.to_dict()), 'pretrained_from': 'aaa'}))
  assert reproduce.read_result(str(path), config, 'aaa')['pretrained_from'] == (
      'aaa')
  with pytest.raises(ValueError, match='another pretraining run'):
    reproduce.read_result(str(path), config, 'bbb')
  # A run started from one pretraining is not resumed from another: refused
  # before anything trains.
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / 'pretrained_from').write_text('aaa\n')
  with pytest.raises(ValueError, match='another pretraining run'):
    reproduce.train_run(run, config, str(run_dir), 'bbb')


def test_a_key_left_at_its_default_on_either_side_is_the_same_run(tmp_path):
  args = _args(tmp_path)
  run = reproduce.Run('scratch', 'contrastive', 'none', 0)
  config = reproduce.run_config(reproduce.base_config(args), run, args)
  full = reproduce.checkpoint_lib.json_safe(config.to_dict())
  path = tmp_path / 'result.json'
  path.write_text(json.dumps({'config': full}))
  lacking = config.copy_and_resolve_references()
  del lacking.eval['epsilon']  # a config written before the key existed
  assert reproduce.read_result(str(path), lacking)['config'] == full
  other = config.copy_and_resolve_references()
  other.eval.epsilon = full['eval']['epsilon'] / 2
  with pytest.raises(ValueError, match=r'differs in eval\.epsilon\)'):
    reproduce.read_result(str(path), other)


def test_pretraining_identity_is_the_hash_of_its_result(tmp_path):
  path = tmp_path / 'result.json'
  path.write_text('{"seconds": 1.0}')
  first = reproduce._identity(str(path))  # pylint: disable=protected-access
  path.write_text('{"seconds": 2.0}')
  assert reproduce._identity(str(path)) != first  # pylint: disable=protected-access
  import hashlib  # pylint: disable=import-outside-toplevel
  assert reproduce._identity(str(path)) == hashlib.sha256(  # pylint: disable=protected-access
      b'{"seconds": 2.0}').hexdigest()


def test_figures_go_beside_the_report_unless_it_is_the_repositorys(tmp_path):
  # A trial report elsewhere must not overwrite the committed figures.
  args = reproduce.parse_args(['--config', CONFIG,
                               '--out', str(tmp_path / 'trial.md')])
  assert args.figures == str(tmp_path)
  args = reproduce.parse_args(['--config', CONFIG, '--out',
                               os.path.join(reproduce.REPOSITORY, 'R.md')])
  assert args.figures == os.path.join(reproduce.REPOSITORY, 'docs')
  args = reproduce.parse_args(['--config', CONFIG, '--out', os.path.join(
      reproduce.REPOSITORY, 'docs', 'reproduction_x.md')])
  assert args.figures == os.path.join(reproduce.REPOSITORY, 'docs')
