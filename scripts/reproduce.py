r"""The reproduction study: every base loss without TCM and with it, any config.

  python scripts/reproduce.py --config configs/glyphs.py     # ~3 h, 2 cores
  python scripts/reproduce.py --config configs/digits_open.py \
      --regimes scratch --steps 100 --seeds 3 --out docs/reproduction_digits.md

For the training config `--config`, every base loss of the registry
(`tcm_jax.losses.registry`, at its defaults) is trained in three variants:
without TCM (`none`), with TCM at the paper's margins m+ 0.9 / m- 0.5
(`paper`), and with TCM at margins from the data (`data`: those at which
`--hard_pos_fraction` of the positive and `--hard_neg_fraction` of the
negative pairs of the validation classes are hard; `loss.tcm_from_data`),
over `--seeds` seeds, in one or two regimes, every run of a regime with the
same budget:

- `scratch`: from a random initialisation for `--steps` steps, the margins
  from the data re-estimated every `--margin_every` steps (margins taken
  once from an untrained model would be wrong for the trained one);
- `finetune` (the paper's regime): from a backbone pretrained for
  `--pretrain_steps` steps with `--pretrain_loss` (no TCM) on the dataset's
  disjoint `pretrain` side (for glyphs the level-2 kanji), one pretraining
  run per seed shared by every loss of that seed, then `--finetune_steps`
  steps of the whole pretrained model (its head included); the margins
  from the data are estimated once, from it, before the first step.

The learning-rate milestones stay at the config's fractions of the run.
Every run trains in its own folder under `--workdir`
(`<regime>/<loss>-<variant>-seed<seed>`) through
`tcm_jax.train.train_and_evaluate`, which leaves its report, metrics (with
bootstrap intervals over the test classes and the hard-pair fractions),
checkpoint and embeddings there; this script then adds `result.json`. A run
whose `result.json` exists is read back, not trained again: an interrupted
study loses only the run it was in, and the work can be split over several
sittings (`--max_minutes` stops cleanly between runs). Checkpoints, margins
and hyperparameters are never chosen on the test classes: the runs end at
their last step, which is evaluated once on them.

It then writes `--out`: the command, machine, versions and budget; for each
regime a table per base loss (mean ± std over seeds, the relative OPIS
change and the Recall@1 change of each TCM variant against no TCM, `*` where
a difference exceeds twice its standard error over seeds), the margins the
data chose, the OPIS-against-Recall@1 figure, the utility curves of one loss
without and with TCM, and a summary computed from the numbers.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax import evaluator as evaluator_lib
from tcm_jax import metrics as metrics_lib
from tcm_jax import plots
from tcm_jax import report as report_lib
from tcm_jax import train
from tcm_jax.data import datasets
from tcm_jax.data import inputs as inputs_lib
from tcm_jax.losses import registry

RESULT_FILE = 'result.json'
VARIANTS = ('none', 'paper', 'data')
VARIANT_NAMES = {'none': 'no TCM', 'paper': 'TCM, paper margins',
                 'data': 'TCM, margins from data'}
VARIANT_PHRASES = {'paper': "At the paper's margins",
                   'data': 'At margins from the data'}
REGIMES = ('finetune', 'scratch')  # the paper's regime first
PAPER_MARGINS = (0.9, 0.5)
# The checkout this script is in.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRICS = (('recall_at_1', 'R@1', 4), ('map_at_r', 'MAP@R', 4),
           ('opis', 'OPIS', 5), ('eps_opis', 'eps-OPIS', 5),
           ('mean_utility', 'mean utility', 4), ('mean_tpr', 'mean TPR', 4))


def registered_losses() -> list[str]:
  """Every base loss: the pair and ranking ones, then the proxy ones.

  Examples:
    >>> len(registered_losses()), registered_losses()[-1]
    (9, 'proxy_anchor')
  """
  return [n for n in registry.LOSSES if n != 'tcm'] + list(
      registry.PROXY_LOSSES)


# --- Arguments -------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='reproduce.py', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True,
                      help='a training config file (path.py[:argument]).')
  parser.add_argument('--workdir', default=None,
                      help='one folder per run (default: '
                      '/tmp/tcm_reproduce_<config name>).')
  parser.add_argument('--out', default='REPRODUCTION.md',
                      help='the report to write.')
  parser.add_argument('--figures', default=None,
                      help='folder of the report\'s figures (default: the '
                      '--out file\'s folder; docs/ for a report at the '
                      'repository\'s root).')
  parser.add_argument('--regimes', nargs='+', default=list(REGIMES),
                      choices=REGIMES)
  parser.add_argument('--losses', nargs='+', default=registered_losses(),
                      help='base losses (default: all nine).')
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                      choices=VARIANTS)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=600,
                      help='steps of every from-scratch run.')
  parser.add_argument('--finetune_steps', type=int, default=300)
  parser.add_argument('--finetune_lr_scale', type=float, default=0.1,
                      help='fine-tuning: the config\'s learning rate times '
                      'this (fixed a priori, as is usual for a pretrained '
                      'backbone).')
  parser.add_argument('--pretrain_steps', type=int, default=2000)
  parser.add_argument('--pretrain_loss', default='multi_similarity')
  parser.add_argument('--hard_pos_fraction', type=float, default=0.2)
  parser.add_argument('--hard_neg_fraction', type=float, default=0.01)
  parser.add_argument('--margin_every', type=int, default=100,
                      help='from scratch: re-estimate the margins every '
                      'this many steps.')
  parser.add_argument('--curves_loss', default=None,
                      help='the loss whose utility curves are drawn '
                      '(default: multi_similarity if studied, else the '
                      'first of --losses).')
  parser.add_argument('--max_minutes', type=float, default=math.inf,
                      help='start no run after this many minutes; write the '
                      'report of what is finished.')
  parser.add_argument('--report_only', action='store_true',
                      help='train nothing; report the finished runs.')
  parser.add_argument('--appendix', nargs='*', default=[],
                      help='reports of other studies (written by this '
                      'script) whose summaries end this one, each linked.')
  args = parser.parse_args(argv)
  args.losses = list(dict.fromkeys(args.losses))
  if args.curves_loss is None:
    args.curves_loss = ('multi_similarity' if 'multi_similarity' in args.losses
                        else args.losses[0])
  args.variants = list(dict.fromkeys(args.variants))
  args.regimes = list(dict.fromkeys(args.regimes))
  unknown = sorted(set(args.losses) - set(registered_losses()))
  if unknown:
    parser.error(f'--losses: unknown {unknown}; registered: '
                 f'{registered_losses()}.')
  if args.curves_loss not in args.losses:
    parser.error(f'--curves_loss must be one of --losses {args.losses}, got '
                 f'{args.curves_loss!r}.')
  for name in ('seeds', 'steps', 'finetune_steps', 'pretrain_steps'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be >= 1, got {getattr(args, name)}.')
  for name in ('hard_pos_fraction', 'hard_neg_fraction'):
    if not 0 < getattr(args, name) < 1:
      parser.error(f'--{name} must be in (0, 1), got {getattr(args, name)}.')
  args.name = os.path.splitext(os.path.basename(args.config.split(':')[0]))[0]
  if args.workdir is None:
    args.workdir = f'/tmp/tcm_reproduce_{args.name}'
  if args.figures is None:  # beside the report: a trial's never overwrite
    folder = os.path.dirname(os.path.abspath(args.out))  # the committed ones
    args.figures = (os.path.join(folder, 'docs') if folder == REPOSITORY
                    else folder)
  return args


# --- Runs ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the study (`loss` 'pretrain' for a pretraining)."""
  regime: str
  loss: str
  variant: str
  seed: int

  @property
  def name(self) -> str:
    if self.loss == 'pretrain':
      return f'{self.regime}/pretrain-seed{self.seed}'
    return f'{self.regime}/{self.loss}-{self.variant}-seed{self.seed}'


_STEPS_PER_EPOCH: dict[str, int] = {}


def _steps_per_epoch(config) -> int:
  """Steps an epoch of `config`'s training side (read once per side)."""
  key = json.dumps(checkpoint_lib.json_safe(
      {'dataset': config.dataset.to_dict(), 'input': config.input.to_dict()}),
                   sort_keys=True)
  if key not in _STEPS_PER_EPOCH:
    _STEPS_PER_EPOCH[key] = inputs_lib.create_inputs(config).steps_per_epoch
  return _STEPS_PER_EPOCH[key]


def _milestones_at(base, config, steps: int) -> tuple[float, ...]:
  """`base`'s milestones at the same fractions of a `steps`-step run of
  `config` (in epochs of `config`'s training side, which may be another)."""
  base_per_epoch = _steps_per_epoch(base)
  total = inputs_lib.num_steps(base, base_per_epoch)
  per_epoch = _steps_per_epoch(config)
  return tuple(round(m * base_per_epoch / total * steps / per_epoch, 6)
               for m in base.optimizer.milestones)


def base_config(args) -> ml_collections.ConfigDict:
  """`--config` as every run of the study uses it, before the run's changes.

  No evaluation or checkpoint before the end, no raw-input baselines (the
  study compares losses), no progress bar; the one-pass evaluation engine.
  """
  config = config_lib.load_config(args.config)
  config.train.eval_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.train.progress_bar = False
  config.eval.baselines = False
  # One pass over each run's test pairs: the metrics, the figure and the
  # operating points off one set of per-class histograms.
  config.eval.engine = 'histogram'
  config.loss.tcm.margin_pos, config.loss.tcm.margin_neg = PAPER_MARGINS
  config.loss.tcm_from_data.hard_pos_fraction = args.hard_pos_fraction
  config.loss.tcm_from_data.hard_neg_fraction = args.hard_neg_fraction
  return config


def run_config(base: ml_collections.ConfigDict, run: Run, args,
               pretrained: str = '') -> ml_collections.ConfigDict:
  """The config of one run."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = run.seed
  config.loss.hyper = ml_collections.ConfigDict()  # registry defaults
  config.eval.final_split = 'test'
  config.pretrained, config.pretrained_head = '', False
  if run.loss == 'pretrain':
    steps = args.pretrain_steps
    config.dataset.train_side = 'pretrain'
    config.eval.final_split = 'val'  # the test classes are not its to see
    config.loss.name = args.pretrain_loss
    config.loss.tcm.enabled = False
  else:
    steps = args.steps if run.regime == 'scratch' else args.finetune_steps
    config.loss.name = run.loss
    config.loss.tcm.enabled = run.variant != 'none'
    data = config.loss.tcm_from_data
    data.enabled = run.variant == 'data'
    data.every_steps = args.margin_every if run.regime == 'scratch' else 0
    if run.regime == 'finetune':
      # The whole pretrained model, head too: the margins from the data are
      # measured on it before the first step.
      config.pretrained, config.pretrained_head = pretrained, True
      config.optimizer.learning_rate *= args.finetune_lr_scale
  config.optimizer.milestones = _milestones_at(base, config, steps)
  config.train.num_steps = steps
  return config


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _identity(path: str) -> str:
  """The sha256 of a finished run's `result.json` (its times included: a
  retrained run has another)."""
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_result(path: str, config: ml_collections.ConfigDict,
                pretrained_from: str | None = None) -> dict:
  """A finished run's `result.json`, checked to be of this very config and,
  for a fine-tuning run, of this very pretraining run (`pretrained_from`)."""
  with open(path) as f:
    result = json.load(f)
  if result.get('pretrained_from') != pretrained_from:
    raise ValueError(
        f'{path} was fine-tuned from another pretraining run than the one now '
        f'in {config.pretrained}; delete the fine-tuning runs of that seed '
        'to train them again.')
  saved = _flat(config_lib.with_default_keys(result['config']))
  now = _flat(config_lib.with_default_keys(  # the same on both sides
      checkpoint_lib.json_safe(config.to_dict())))
  changed = sorted(k for k in set(saved) | set(now)
                   if saved.get(k) != now.get(k))
  if changed:
    raise ValueError(f'{path} holds a run of another config (it differs in '
                     f'{", ".join(changed)}); use another --workdir.')
  return result


def code_revision() -> str | None:
  """The checkout's commit (with `+changes` when its files differ from it),
  or None outside a git checkout."""
  repository = REPOSITORY
  try:
    commit = subprocess.run(['git', '-C', repository, 'rev-parse', '--short',
                             'HEAD'], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    changes = subprocess.run(['git', '-C', repository, 'status',
                              '--porcelain', '--untracked-files=no'],
                             capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('+changes' if changes else '')


def train_run(run: Run, config: ml_collections.ConfigDict, run_dir: str,
              pretrained_from: str | None = None) -> dict[str, Any]:
  """Trains and evaluates one run; writes and returns its `result.json`."""
  start = time.perf_counter()
  # Which pretraining the run starts from, written before it trains: a run
  # resumed after its pretraining was redone is refused, not mislabelled.
  marker = os.path.join(run_dir, 'pretrained_from')
  if pretrained_from is not None:
    if os.path.exists(marker):
      with open(marker) as f:
        if f.read().strip() != pretrained_from:
          raise ValueError(
              f'{run_dir} was started from another pretraining run than the '
              f'one now in {config.pretrained}; delete it to train it again.')
    os.makedirs(run_dir, exist_ok=True)
    with open(marker, 'w') as f:
      f.write(pretrained_from + '\n')
  config_lib.check_config(config)  # a bad config stops the study, not one run
  try:
    train.train_and_evaluate(config, run_dir, devices=jax.local_devices()[:1])
  except (train.NonFiniteLossError, metrics_lib.CalibrationRangeError) as e:
    # What training did, not a mistake of the study: a loss that diverges,
    # or embeddings collapsed so that the calibration range is empty. The
    # run is kept as failed (and reported), the study goes on; any other
    # error (fonts, checkpoints, config) stops it.
    if run.loss == 'pretrain':
      raise RuntimeError(f'Run {run.name} failed: {e}') from e
    saved = None
    failure = f'{type(e).__name__}: {e}'
  else:
    with open(os.path.join(run_dir, 'metrics.json')) as f:
      saved = json.load(f)
    failure = None
  if saved is None:
    result = dict(regime=run.regime, loss=run.loss, variant=run.variant,
                  seed=run.seed, seconds=time.perf_counter() - start,
                  failed=failure, metrics=None, pretrained_from=pretrained_from,
                  code_revision=code_revision(),
                  config=checkpoint_lib.json_safe(config.to_dict()))
    return _write_result(run_dir, result)
  result = dict(regime=run.regime, loss=run.loss, variant=run.variant,
                seed=run.seed, seconds=time.perf_counter() - start,
                metrics=_run_metrics(saved), tcm_pairs=saved.get('tcm_pairs'),
                num_classes=saved.get('num_classes_evaluated'),
                num_images=saved.get('num_queries'),
                tcm_margins=saved.get('tcm_margins', []),
                bootstrap=saved.get('bootstrap'),
                pretrained_from=pretrained_from, code_revision=code_revision(),
                config=checkpoint_lib.json_safe(config.to_dict()))
  return _write_result(run_dir, result)


def _write_result(run_dir: str, result: dict[str, Any]) -> dict[str, Any]:
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, RESULT_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(path + '.tmp', path)  # a kill leaves no half-written result
  return result


def failed(result: dict[str, Any]) -> bool:
  """Whether a run stopped without test metrics (see `train_run`)."""
  return bool(result.get('failed'))


def _run_metrics(saved: dict[str, Any]) -> dict[str, float]:
  values, _ = report_lib.load_results_dict(saved)
  values.update(mean_utility=saved['mean_utility'],
                mean_tpr=saved['mean_tpr'])
  return values


def study_runs(args) -> list[Run]:
  """Every run, pretraining first; a loss's variants and seeds together."""
  runs = []
  for regime in args.regimes:
    if regime == 'finetune':
      runs += [Run(regime, 'pretrain', 'none', s) for s in range(args.seeds)]
    runs += [Run(regime, loss, variant, seed) for loss in args.losses
             for variant in args.variants for seed in range(args.seeds)]
  return runs


def run_all(args, base) -> tuple[dict[Run, dict], bool]:
  """`({run: result}, complete)`: trained or read back, in order."""
  runs = study_runs(args)
  results, started = {}, time.perf_counter()
  todo = sum(not os.path.exists(os.path.join(args.workdir, r.name,
                                             RESULT_FILE)) for r in runs)
  trained_seconds = []
  for i, run in enumerate(runs, 1):
    run_dir = os.path.join(args.workdir, run.name)
    pretrained = (os.path.join(args.workdir, Run(
        run.regime, 'pretrain', 'none', run.seed).name)
                  if run.regime == 'finetune' and run.loss != 'pretrain'
                  else '')
    config = run_config(base, run, args, pretrained)
    path = os.path.join(run_dir, RESULT_FILE)
    pretrained_result = os.path.join(pretrained, RESULT_FILE)
    pretrained_from = (_identity(pretrained_result) if pretrained
                       and os.path.exists(pretrained_result) else None)
    if os.path.exists(path):
      results[run] = read_result(path, config, pretrained_from)
      how = 'read back'
    elif args.report_only or (
        time.perf_counter() - started) / 60 > args.max_minutes:
      continue
    else:
      results[run] = train_run(run, config, run_dir, pretrained_from)
      trained_seconds.append(results[run]['seconds'])
      left = todo - len(trained_seconds)
      how = (f'{results[run]["seconds"]:5.1f} s, ETA '
             f'{left * np.mean(trained_seconds) / 60:.0f} min')
    m = results[run]['metrics']
    scores = (f'FAILED ({results[run]["failed"][:60]})' if failed(results[run])
              else f'R@1 {m["recall_at_1"]:.4f} OPIS {m["opis"]:.5f}')
    print(f'[{i:3d}/{len(runs)}] {run.name:45s} {scores}  {how}', flush=True)
  return results, len(results) == len(runs)


# --- Statistics ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean, standard deviation (ddof 1; 0 for one value) and count."""
  mean: float
  std: float
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> Stat:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return cls(float(values.mean()), std, len(values))

  def format(self, digits: int) -> str:
    if self.n == 1:
      return f'{self.mean:.{digits}f}'
    return f'{self.mean:.{digits}f} ± {self.std:.{digits}f}'


def clear_change(a: Stat, b: Stat) -> bool:
  """Whether two means differ by more than twice the difference's standard
  error over seeds (False with fewer than two seeds a side).

  Examples:
    >>> clear_change(Stat(1.0, 0.1, 3), Stat(1.5, 0.1, 3))
    True
    >>> clear_change(Stat(1.0, 0.1, 3), Stat(1.1, 0.1, 3))
    False
  """
  if a.n < 2 or b.n < 2:
    return False
  return abs(b.mean - a.mean) > 2 * math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def cell_stats(results: dict[Run, dict], regime: str, loss: str,
               variant: str) -> dict[str, Stat] | None:
  """Per metric (and margins, hard fractions), the Stat over seeds."""
  cell = [r for run, r in results.items() if (run.regime, run.loss,
                                              run.variant) == (regime, loss,
                                                               variant)
          and not failed(r)]
  if not cell:
    return None
  stats = {key: Stat.of([r['metrics'][key] for r in cell])
           for key, _, _ in METRICS}
  for key in ('margin_pos', 'margin_neg', 'hard_pos_fraction',
              'hard_neg_fraction'):
    stats[key] = Stat.of([r['tcm_pairs'][key] for r in cell])
  return stats


@dataclasses.dataclass
class Comparison:
  """One base loss in one regime: TCM variant against no TCM.

  `num_failed` runs of the two cells failed and are not in their stats; a
  comparison with failed runs is never called clear (`clear` is False): the
  runs that survived a collapse are not a sample of the seeds.
  """
  loss: str
  variant: str
  without: dict[str, Stat]
  with_tcm: dict[str, Stat]
  num_failed: int = 0

  def change(self, key: str) -> float:
    """Relative change of the mean, in percent."""
    a, b = self.without[key].mean, self.with_tcm[key].mean
    return 100.0 * (b - a) / a if a else math.nan

  def points(self, key: str) -> float:
    """Change of the mean in percentage points."""
    return 100.0 * (self.with_tcm[key].mean - self.without[key].mean)

  def clear(self, key: str) -> bool:
    return not self.num_failed and clear_change(self.without[key],
                                                self.with_tcm[key])

  def lower(self, key: str) -> bool:
    """`key`'s mean lower with TCM, beyond its uncertainty."""
    return self.with_tcm[key].mean < self.without[key].mean and self.clear(key)

  @property
  def equal_recall(self) -> bool:
    """R@1 not lower beyond its uncertainty."""
    return not self.lower('recall_at_1')

  @property
  def lowers_opis(self) -> bool:
    """OPIS lower beyond its uncertainty."""
    return self.lower('opis')

  @property
  def consistent_win(self) -> bool:
    """OPIS lower beyond its uncertainty at a Recall@1 and a mean utility
    not lower beyond theirs: more consistent, not uniformly poorer (a model
    that accepts little everywhere has a low OPIS too)."""
    return (self.lowers_opis and self.equal_recall
            and not self.lower('mean_utility'))


def comparisons(results, regime: str, losses: Sequence[str],
                variant: str) -> list[Comparison]:
  found = []
  for loss in losses:
    a = cell_stats(results, regime, loss, 'none')
    b = cell_stats(results, regime, loss, variant)
    if a is not None and b is not None:
      lost = (failures(results, regime, loss, 'none')
              + failures(results, regime, loss, variant))
      found.append(Comparison(loss, variant, a, b, len(lost)))
  return found


# --- The report ------------------------------------------------------------------


def _star(c: Comparison, key: str) -> str:
  return ' *' if c.clear(key) else ''


def regime_table(results, regime: str, args) -> list[str]:
  lines = ['| base loss | variant | R@1 | MAP@R | OPIS | eps-OPIS | mean utility '
           '| mean TPR | m+ / m- | hard pos / neg (test) | OPIS change | '
           'R@1 change |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for loss in args.losses:
    without = cell_stats(results, regime, loss, 'none')
    for variant in args.variants:
      s = cell_stats(results, regime, loss, variant)
      lost = failures(results, regime, loss, variant)
      name = VARIANT_NAMES[variant] + (f' ({len(lost)} failed)' if lost else '')
      if s is None:
        if lost:
          lines.append(f'| {loss} | {name} | every run failed |'
                       + ' |' * 9)
        continue
      cells = [s[k].format(d) for k, _, d in METRICS]
      margins = ('' if variant == 'none' else
                 f'{s["margin_pos"].mean:.3f} / {s["margin_neg"].mean:.3f}')
      hard = (f'{s["hard_pos_fraction"].mean:.3f} / '
              f'{s["hard_neg_fraction"].mean:.4f}')
      change = ['', '']
      if variant != 'none' and without is not None:
        c = Comparison(loss, variant, without, s, len(
            lost + failures(results, regime, loss, 'none')))
        change = [f'{c.change("opis"):+.1f}%{_star(c, "opis")}',
                  f'{c.points("recall_at_1"):+.2f} pt'
                  f'{_star(c, "recall_at_1")}']
      lines.append(f'| {loss} | {name} | '
                   + ' | '.join(cells + [margins, hard] + change) + ' |')
  return lines


def failures(results, regime: str, loss: str | None = None,
             variant: str | None = None) -> list[tuple[Run, str]]:
  """The failed runs of a regime (of one cell, given loss and variant)."""
  return [(run, r['failed']) for run, r in results.items()
          if run.regime == regime and failed(r)
          and loss in (None, run.loss) and variant in (None, run.variant)]


def _failed_recall(run: Run, args) -> str:
  """A failed run's Recall@1 (it needs no calibration range), from the
  embeddings its final evaluation set aside, when it did."""
  path = os.path.join(args.workdir, run.name,
                      evaluator_lib.FAILED_EMBEDDINGS)
  if not os.path.exists(path):
    return ''
  with np.load(path) as saved:
    z, labels = saved['embeddings'], saved['labels']
  found = metrics_lib.evaluate_embeddings(
      z, labels, distance_range=(0.0, 2.0), ks=(1,))  # any range: R@1 only
  return f' (its Recall@1: {found.retrieval.recall_at_k[1]:.4f})'


def failure_lines(results, regime: str, args) -> list[str]:
  lost = failures(results, regime)
  if not lost:
    return []
  return ['Failed runs (left out of the means above; a cell\'s standard '
          'deviation is then over its other seeds, and no change of a loss '
          'with a failed run is marked `*` or counted as beyond its '
          'uncertainty: the seeds that survived a collapse are not a sample '
          'of the seeds):', '',
          *[f'- `{run.name}`: {why}{_failed_recall(run, args)}'
            for run, why in lost], '']


def _names(items: Sequence[Comparison]) -> str:
  return ', '.join(c.loss for c in items) or 'none'


def _test_set(results) -> tuple[int | None, int | None]:
  """(classes, images) of the test set, from a finished non-pretraining run."""
  for run, r in results.items():
    if run.loss != 'pretrain' and not failed(r) and r.get('num_classes'):
      return r['num_classes'], r.get('num_images')
  return None, None


def regime_summary(results, regime: str, args) -> str:
  """The regime's conclusion, computed from the numbers."""
  classes, images = _test_set(results)
  where = 'from scratch' if regime == 'scratch' else 'fine-tuning'
  sentences = [f'{where.capitalize()}, on {classes} test classes '
               f'({images} images), {args.seeds} seeds:' if classes else
               f'{where.capitalize()}:']
  if classes and classes < 50:
    sentences.append(
        f'(with {classes} test classes OPIS is a variance over {classes} '
        'curves: single runs are noisy, and few changes can exceed their '
        'uncertainty)')
  for variant in [v for v in args.variants if v != 'none']:
    found = comparisons(results, regime, args.losses, variant)
    if not found:
      continue
    lower = [c for c in found if c.change('opis') < 0]
    clearly = [c for c in found if c.lowers_opis]
    both = [c for c in clearly if c.consistent_win]
    poorer = [c for c in clearly if c.lower('mean_utility')]
    higher = [c for c in found if c.change('opis') > 0 and c.clear('opis')]
    recall_down = [c for c in found if not c.equal_recall]
    incomplete = [c for c in found if c.num_failed]
    changes = [c.change('opis') for c in found]
    recall = [c.points('recall_at_1') for c in found]
    sentences.append(
        f'{VARIANT_PHRASES[variant]}, TCM lowered the mean OPIS for '
        f'{len(lower)} of {len(found)} base losses (median change '
        f'{np.median(changes):+.1f}%, from {min(changes):+.1f}% to '
        f'{max(changes):+.1f}%); beyond its uncertainty for {len(clearly)} '
        f'({_names(clearly)}), {len(both)} of them at a Recall@1 and a mean '
        f'utility not lower beyond their uncertainty ({_names(both)}) and '
        f'{len(poorer)} with the mean utility lower beyond it, a uniformly '
        f'poorer model rather than a more consistent one ({_names(poorer)}); '
        f'OPIS rose beyond it for {len(higher)} ({_names(higher)}). Recall@1 '
        f'changed by {np.median(recall):+.2f} points in the median (from '
        f'{min(recall):+.2f} to {max(recall):+.2f}); it fell beyond its '
        f'uncertainty for {len(recall_down)} ({_names(recall_down)}).'
        + (f' Not judged, a run having failed: {_names(incomplete)}.'
           if incomplete else ''))
  lost = failures(results, regime)
  if lost:
    sentences.append(
        f'{len(lost)} run(s) failed and are left out of the means: '
        + ', '.join(f'{run.loss} {VARIANT_NAMES[run.variant]} seed '
                    f'{run.seed}' for run, _ in lost) + '.')
  return ' '.join(sentences)


def conclusion_lines(results, args) -> list[str]:
  """Per regime and margin choice: for how many losses TCM lowered OPIS."""
  lines = ['| regime | TCM margins | losses | OPIS lower (mean) | OPIS lower '
           'beyond uncertainty, R@1 and mean utility not lower beyond it | '
           'OPIS lower beyond uncertainty, mean utility lower beyond it | '
           'OPIS higher beyond uncertainty | R@1 lower beyond uncertainty | '
           'losses with a failed run (not judged) |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for regime in args.regimes:
    for variant in [v for v in args.variants if v != 'none']:
      found = comparisons(results, regime, args.losses, variant)
      if not found:
        continue
      lines.append(
          f'| {regime} | {variant} | {len(found)} | '
          f'{sum(c.change("opis") < 0 for c in found)} | '
          f'{sum(c.consistent_win for c in found)} | '
          f'{sum(c.lowers_opis and c.lower("mean_utility") for c in found)} | '
          f'{sum(c.change("opis") > 0 and c.clear("opis") for c in found)} | '
          f'{sum(not c.equal_recall for c in found)} | '
          f'{sum(bool(c.num_failed) for c in found)} |')
  return lines


def _figure_runs(results, regime: str, variant: str) -> list[dict]:
  return [dict(loss=run.loss, tcm=run.variant != 'none',
               recall_at_1=r['metrics']['recall_at_1'],
               opis=r['metrics']['opis'])
          for run, r in results.items()
          if run.regime == regime and run.variant in ('none', variant)
          and run.loss != 'pretrain' and not failed(r)]


def _link(path: str, args) -> str:
  """`path` as the report at `args.out` links to it."""
  return os.path.relpath(path, os.path.dirname(os.path.abspath(args.out)))


def write_figures(results, regime: str, args) -> list[str]:
  """The OPIS-vs-R@1 figure (one panel per TCM variant) and the utility
  curves of `--curves_loss` without and with TCM; the report's lines."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import figure  # pylint: disable=import-outside-toplevel
  os.makedirs(args.figures, exist_ok=True)
  lines = []
  variants = [v for v in args.variants if v != 'none']
  if variants:
    fig = figure.Figure(figsize=(6.5 * len(variants), 5))
    axes = fig.subplots(1, len(variants), squeeze=False)[0]
    for ax, variant in zip(axes, variants):
      plots.plot_opis_vs_recall(_figure_runs(results, regime, variant), ax=ax,
                                title=f'{regime}: {VARIANT_NAMES[variant]}')
    path = os.path.join(args.figures, f'reproduction_{args.name}_{regime}.png')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    lines += [f'![OPIS against Recall@1, {regime}]({_link(path, args)})', '',
              'Each point is one run (circles without TCM, stars with it); '
              'each arrow goes from a loss\'s mean without TCM to its mean '
              'with TCM. Lower is more threshold-consistent, further right '
              'retrieves better.', '']
  picked = [Run(regime, args.curves_loss, v, 0) for v in args.variants]
  picked = [run for run in picked if run in results
            and not failed(results[run])]
  if len(picked) > 1:
    fig = figure.Figure(figsize=(5.5 * len(picked), 4.2))
    axes = fig.subplots(1, len(picked), squeeze=False)[0]
    for ax, run in zip(axes, picked):
      with np.load(os.path.join(args.workdir, run.name,
                                'embeddings.npz')) as saved:
        evaluation = metrics_lib.evaluate_embeddings(
            saved['embeddings'], saved['labels'], **evaluator_lib.eval_kwargs(
                ml_collections.ConfigDict(results[run]['config'])))
      plots.plot_utility_curves(
          evaluation.curves, evaluation.curves.calibration_range, ax=ax,
          title=f'{run.loss}, {VARIANT_NAMES[run.variant]}: OPIS '
          f'{evaluation.opis:.4f}')
    path = os.path.join(args.figures, f'reproduction_{args.name}_{regime}_curves.png')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    lines += [f'![utility curves, {regime}]({_link(path, args)})', '',
              f'Per-class utility curves of {args.curves_loss} (seed 0) on '
              'the test classes, without TCM and with it: the shaded band is '
              'the calibration range; OPIS is the spread of the curves '
              'inside it.', '']
  return lines


SUMMARY_START, SUMMARY_END = '<!-- summary -->', '<!-- /summary -->'


def appendix_lines(path: str, args) -> list[str]:
  """A section with the title and summaries of another study's report."""
  with open(path) as f:
    text = f.read()
  title = text.splitlines()[0].lstrip('# ').strip() if text else path
  summaries = [part.split(SUMMARY_END)[0].strip()
               for part in text.split(SUMMARY_START)[1:]]
  if not summaries:
    raise ValueError(f'--appendix {path}: no summary in it (not a report of '
                     'scripts/reproduce.py?).')
  return [f'## Appendix: {title}', '', f'From [{path}]({_link(path, args)}), '
          'where its tables, budget and caveats are:', '', *summaries, '']


def budget_lines(base, args) -> list[str]:
  m = base.model.to_dict()
  model = f'{m.pop("name")} ({", ".join(f"{k}={v}" for k, v in sorted(m.items()))})'
  i = base.input
  spec = datasets.DATASETS.get(base.dataset.name)
  source = ('the validation classes' if spec is not None and 'val' in spec.sides
            else 'the training classes (the dataset has no validation side)')
  regimes, when = [], []
  if 'scratch' in args.regimes:
    regimes.append(f'From scratch: {args.steps} steps.')
    when.append(f're-estimated every {args.margin_every} steps from scratch'
                if args.margin_every < args.steps else
                'estimated once from scratch, from the untrained model before '
                'the first step')
  if 'finetune' in args.regimes:
    regimes.append(
        f'Fine-tuning: {args.pretrain_steps} steps of {args.pretrain_loss} '
        f'(no TCM) on the `pretrain` side, then {args.finetune_steps} steps at '
        f'{args.finetune_lr_scale:g} x the learning rate.')
    when.append('once (from the pretrained model, its head included) when '
                'fine-tuning')
  defaults = (args.hard_pos_fraction, args.hard_neg_fraction) == (0.2, 0.01)
  return [
      f'- Config: `{args.config}` (the dataset, model, input and optimizer); '
      'no evaluation before the last step, which is evaluated once on the '
      f'test classes ({base.eval.engine} engine: thresholds on the 2**-14 '
      'grid of [the one-pass engine](docs/definitions.md#the-one-pass-engine)).',
      f'- Model: {model}.',
      f'- Batches: {i.classes_per_batch} classes x {i.samples_per_class} '
      f'images, {i.image_size} px, `{i.recipe}` recipe; '
      f'{base.optimizer.name} at {base.optimizer.learning_rate:g}, decayed '
      f'x{base.optimizer.decay_factor:g} at the config\'s milestones taken at '
      'the same fractions of each run.',
      f'- {" ".join(regimes)}',
      f'- TCM at the paper\'s margins: m+ {PAPER_MARGINS[0]}, m- '
      f'{PAPER_MARGINS[1]}. From the data: {100 * args.hard_pos_fraction:g}% '
      f'of positive and {100 * args.hard_neg_fraction:g}% of negative pairs '
      f'of {source} hard (at most {base.loss.tcm_from_data.max_samples} '
      f'images), {" and ".join(when)}.'
      + (' These fractions are the script\'s defaults, set before any run of '
         'the studies, not tuned.' if defaults else ''),
      f'- Seeds: 0-{args.seeds - 1} (initialisation, batch order'
      + (', pretraining' if 'finetune' in args.regimes else '')
      + f'); one {jax.local_devices()[0].platform.upper()} device; '
      'base losses at their registry defaults.',
  ]


def revisions_line(results) -> str:
  """The code revisions the runs recorded, with their counts."""
  counts = collections.Counter(r.get('code_revision') for r in results.values())
  parts = [f'{revision} ({n} runs)' for revision, n in sorted(
      counts.items(), key=lambda item: -item[1]) if revision]
  if counts.get(None):
    parts.append(f'not recorded ({counts[None]} runs, made before the script '
                 'recorded it)')
  return 'the runs\' revisions: ' + ', '.join(parts)


def write_report(args, command: str, base, results, complete: bool,
                 wall: float) -> None:
  runs = [r for run, r in results.items() if run.loss != 'pretrain']
  lines = [
      f'# Reproduction on {args.name}: does TCM make one threshold work for '
      'every class?', '',
      f'Written by `scripts/reproduce.py` from the runs\' own files (one '
      f'folder per run under `{args.workdir}`); rerun the command to remake '
      'it.', '',
      'The paper (Zhang et al., *Threshold-Consistent Margin Loss for '
      'Open-World Deep Metric Learning*, ICLR 2024) adds TCM to a base loss '
      'so that one distance threshold works equally well for every class: '
      'OPIS, the variance of the per-class utility curves over a calibration '
      'range of thresholds, should fall, at an equal Recall@1. OPIS alone '
      'cannot tell a uniformly poor model from a consistent one, so the '
      'tables also give the mean utility and mean TPR inside the range.', '',
  ]
  if not complete:
    lines += [f'**Partial:** {len(results)} of {len(study_runs(args))} runs '
              'are finished; the numbers below are of those only.', '']
  seconds = [r['seconds'] for r in results.values()]
  lines += [
      '## How it was made', '',
      f'- Command: `{command}`',
      f'- Machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} cores; JAX {jax.__version__} on '
      f'{jax.default_backend().upper()}, Python {platform.python_version()}.',
      f'- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}'
      ' UTC.',
      f'- Code: {revisions_line(results)}.',
      f'- Time: {sum(seconds) / 60:.1f} min of training and evaluation over '
      f'{len(results)} runs (median {np.median(seconds) if seconds else 0:.1f}'
      ' s a run; a run paused or on a busy machine counts its whole wall '
      'time, a run resumed from its checkpoint only its last sitting); this '
      f'invocation {wall / 60:.1f} min.', '',
      'The budget, the same for every run of a regime:', '',
      *budget_lines(base, args), '',
  ]
  for regime in args.regimes:
    if not any(run.regime == regime for run in results):
      continue
    pre = [r for run, r in results.items()
           if run.regime == regime and run.loss == 'pretrain']
    title = ('From scratch' if regime == 'scratch' else
             'Fine-tuning a pretrained model')
    lines += [f'## {title}', '']
    if pre:
      lines += [f'Pretrained backbones ({args.pretrain_loss}, evaluated on the '
                'validation classes): R@1 ' + ', '.join(
                    f'{r["metrics"]["recall_at_1"]:.4f}' for r in pre)
                + '.', '']
    lines += [
        'Mean ± standard deviation over seeds on the test classes. m+ / m-: '
        'the margins (for margins from the data, the last estimate, mean '
        'over seeds); hard pos / neg: the fractions of the test classes\' '
        'positive and negative pairs TCM counts as hard at those margins (the '
        'paper\'s for runs without TCM). Changes: against no TCM, OPIS '
        'relative, R@1 in points; `*`: larger than twice the standard error '
        f'over seeds (unpaired; with {args.seeds} seeds a side roughly a '
        f'{"10" if args.seeds <= 3 else "5-10"}% two-sided test; never given '
        'to a loss with a failed run). Each run\'s bootstrap intervals over '
        'test classes are in its `metrics.json` and in the per-run list '
        'below.', '',
        *regime_table(results, regime, args), '',
        *failure_lines(results, regime, args),
        SUMMARY_START, regime_summary(results, regime, args), SUMMARY_END, '',
        *write_figures(results, regime, args)]
  lines += ['## Conclusion', '', 'Counts of base losses, from the tables '
            'above (uncertainty: twice the standard error over seeds):', '',
            *conclusion_lines(results, args), '']
  for path in args.appendix:
    lines += appendix_lines(path, args)
  boot = next((r['bootstrap'] for r in results.values() if r.get('bootstrap')),
              None)
  lines += ['## Every run', '',
            (f'{100 * boot["confidence"]:g}% bootstrap intervals over the test '
             f'classes ({boot["num_resamples"]} resamples of the classes, seed '
             f'{boot["seed"]}).' if boot else 'No bootstrap intervals.'), '',
            '| run | R@1 | OPIS | eps-OPIS | seconds |', '|---|---|---|---|---:|']
  for run, r in results.items():
    if run.loss == 'pretrain':
      continue
    if failed(r):
      lines.append(f'| {run.name} | failed | | | {r["seconds"]:.0f} |')
      continue
    b = (r.get('bootstrap') or {}).get('intervals', {})
    cell = lambda key, d: (f'{r["metrics"][key]:.{d}f}' + (
        f' [{b[key]["low"]:.{d}f}, {b[key]["high"]:.{d}f}]' if key in b
        else ''))
    lines.append(f'| {run.name} | {cell("recall_at_1", 4)} | '
                 f'{cell("opis", 5)} | {cell("eps_opis", 5)} | '
                 f'{r["seconds"]:.0f} |')
  with open(args.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  del runs


def main(argv: Sequence[str] | None = None) -> str:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  logging.getLogger('absl').setLevel(logging.WARNING)
  # The command that remakes the study (not the flags of this sitting).
  shown, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg == '--report_only' or arg.startswith('--max_minutes='):
      continue
    if arg == '--max_minutes':
      skip = True
      continue
    shown.append(arg)
  command = 'python scripts/reproduce.py ' + shlex.join(shown)
  started = time.perf_counter()
  # Runs of one loss compile the same programs (the margins are arguments):
  # a persistent cache spares the recompilation across runs and sittings.
  # Every program is cached, the small ones too: a run compiles about 160
  # (initialisers, evaluation kernels, the train step), about 19 s of a
  # 100 s from-scratch run when each is compiled afresh.
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(args.workdir, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  base = base_config(args)
  sides = datasets.DATASETS[base.dataset.name].sides if (
      base.dataset.name in datasets.DATASETS) else ()
  if 'finetune' in args.regimes and 'pretrain' not in sides:
    raise ValueError(
        f'--regimes finetune pretrains on the dataset\'s pretrain side, and '
        f'{base.dataset.name} has none (its sides: {list(sides)}); use '
        '--regimes scratch.')
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)  # before hours of training, not after
  if not os.access(out_dir, os.W_OK):
    raise ValueError(f'--out {args.out}: {out_dir} is not writable.')
  results, complete = run_all(args, base)
  if not results:
    raise SystemExit(f'reproduce.py: no finished run in {args.workdir}.')
  write_report(args, command, base, results, complete,
               time.perf_counter() - started)
  print(f'Wrote {args.out} ({len(results)} runs'
        + ('' if complete else ', partial') + ').')
  return args.out


if __name__ == '__main__':
  try:
    main()
  except (RuntimeError, ValueError, OSError, KeyError, TypeError) as error:
    print(f'reproduce.py: error: {error}', file=sys.stderr)
    sys.exit(1)
