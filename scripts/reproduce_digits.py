r"""The reproduction study: every base loss with and without TCM, on digits.

  python scripts/reproduce_digits.py                 # the study, ~20-30 min
  python scripts/reproduce_digits.py --losses smooth_ap arcface --seeds 2

Trains each base loss of the registry (`tcm_jax.losses.registry`) with and
without TCM on the open-world digits split (train on digits 0-4, evaluate on
the unseen 5-9; the default run, `configs/digits.py`, is closed-set), over
`--seeds` seeds, every run with the same budget: the model and optimizer of
`configs/digits.py` with batches of the five digits x 16, at
`--image_size` px for `--steps` steps, the learning-rate milestones at the
same fractions of the run. Each base loss keeps its registry defaults (all
nine train at them); TCM has the paper's margins (m+ 0.9, m- 0.5). A small
margin sweep (`--sweep`, on by default) then trains TCM at other margins on
`--sweep_losses` over the first `--sweep_seeds` seeds.

It writes `--out` (REPRODUCTION.md): the command, machine, versions, wall
time and budget; per base loss the mean and standard deviation over seeds of
Recall@1, MAP@R, OPIS and eps-OPIS without and with TCM, TCM's relative
change of OPIS and its change of Recall@1; a summary computed from them; the
sweep's table; and the OPIS-vs-Recall@1 figure (`--figure`, drawn by
`tcm_jax.plots.plot_opis_vs_recall`).

Every run trains in its own folder under `--workdir` through
`tcm_jax.train.train_and_evaluate`, which leaves its report, metrics,
checkpoint and embeddings there; this script then adds `result.json`. A run
whose `result.json` exists is read back, not trained again, so an interrupted
study loses only the run it was in. The study runs on one CPU device (two
virtual devices were slower on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import flax
import jax
import ml_collections
import numpy as np

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import plots
from tcm_jax import train
from tcm_jax.losses import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, 'configs', 'digits.py')
RESULT_FILE = 'result.json'

# The budget of every run (measured on a 2-core CPU: about 0.07 s a step at
# 12 px when the machine is quiet, 0.12-0.18 s under load; see REPRODUCTION.md).
DEFAULT_STEPS = 100
DEFAULT_IMAGE_SIZE = 12
DEFAULT_SEEDS = 5

# The margin sweep: m+ lowered from the paper's 0.9 at its m- 0.5, on one
# pair-based, one ranking and one proxy-based loss. (A first look at m- 0.2
# and 0.3 moved OPIS far less than m+ did: at this budget the batches hold
# few negatives above 0.5, and most positives lie below 0.9.)
SWEEP_MARGINS = ((0.8, 0.5), (0.7, 0.5), (0.6, 0.5))
SWEEP_LOSSES = ('triplet', 'smooth_ap', 'arcface')
SWEEP_SEEDS = 3

METRICS = (('recall_at_1', 'R@1', 4), ('map_at_r', 'MAP@R', 4),
           ('opis', 'OPIS', 5), ('eps_opis', 'eps-OPIS', 5))

HEADER = """\
# Reproduction on open-world digits: every base loss with and without TCM

This file is written by `scripts/reproduce_digits.py`; every number in it comes
from the runs that script trained (one folder per run under its `--workdir`,
each with `metrics.json`, `report.md` and `result.json`). Rerun the command
below to remake it.

The question is the paper's (Zhang et al., *Threshold-Consistent Margin Loss
for Open-World Deep Metric Learning*, ICLR 2024): does adding TCM to a base
loss make one distance threshold work equally well for every class, measured
by OPIS (the variance of the per-class utility curves over a range of
thresholds, lower is more consistent) and eps-OPIS (the gap between the worst
10% of classes and the rest), without hurting retrieval (Recall@1, MAP@R)?
The data are scikit-learn's handwritten digits in the open-world split
(`digits`, with the recipe of `configs/digits.py`): the model trains on digits
0-4 and is evaluated on the unseen digits 5-9 (896 images, 5 classes). With 5 test classes OPIS is a
variance over 5 curves, so single runs are noisy: the table gives the mean and
the standard deviation over seeds, and marks with `*` the changes larger than
twice their standard error.
"""


# --- Arguments -------------------------------------------------------------------


def registered_losses() -> list[str]:
  """Every base loss of the registry: the pair and ranking ones, then proxies.

  Examples:
    >>> registered_losses()[:2], len(registered_losses())
    (['contrastive', 'triplet'], 9)
  """
  return [n for n in registry.LOSSES if n != 'tcm'] + list(
      registry.PROXY_LOSSES)


def _loss_list(values: Sequence[str], parser, flag: str) -> list[str]:
  """Names given as separate words or comma-separated, checked."""
  names = [n for v in values for n in v.split(',') if n]
  known = registered_losses()
  for name in names:
    if name not in known:
      parser.error(f'{flag}: unknown loss {name!r}; the registered base losses '
                   f'are: {", ".join(known)}.')
  if not names:
    parser.error(f'{flag}: name at least one loss.')
  if len(set(names)) != len(names):
    parser.error(f'{flag}: a loss is named twice in {names}.')
  return names


def _margin_pair(text: str) -> tuple[float, float]:
  """'0.8,0.3' as (0.8, 0.3): TCM's m+ and m-, cosine similarities."""
  try:
    m_pos, m_neg = (float(v) for v in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'a margin pair is M_POS,M_NEG (e.g. 0.8,0.3), got {text!r}') from None
  if not -1 <= m_neg < m_pos <= 1:
    raise argparse.ArgumentTypeError(
        f'margins need -1 <= m- < m+ <= 1, got {text!r}')
  return m_pos, m_neg


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line; bad values exit with a message (argparse's `error`)."""
  parser = argparse.ArgumentParser(
      prog='python scripts/reproduce_digits.py',
      description=__doc__.split('\n\n')[0].strip(),
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--workdir', default='/tmp/tcm_reproduce_digits',
                      help='one subfolder per run; finished runs are reused')
  parser.add_argument('--losses', nargs='+', default=registered_losses(),
                      help='base losses (names or comma-separated lists)')
  parser.add_argument('--seeds', type=int, default=DEFAULT_SEEDS,
                      help='seeds 0 .. N-1 per configuration')
  parser.add_argument('--steps', type=int, default=DEFAULT_STEPS,
                      help='training steps of every run')
  parser.add_argument('--image_size', type=int, default=DEFAULT_IMAGE_SIZE,
                      help='image side in pixels (the digits are 8 px)')
  parser.add_argument('--sweep', action=argparse.BooleanOptionalAction,
                      default=True, help='run the TCM margin sweep')
  parser.add_argument('--sweep_losses', nargs='+', default=list(SWEEP_LOSSES),
                      help='base losses of the margin sweep')
  parser.add_argument('--sweep_seeds', type=int, default=SWEEP_SEEDS,
                      help='seeds of the margin sweep')
  parser.add_argument('--sweep_margins', nargs='+', type=_margin_pair,
                      default=list(SWEEP_MARGINS), metavar='M_POS,M_NEG',
                      help='the margin pairs of the sweep')
  parser.add_argument('--out', default=os.path.join(REPO, 'REPRODUCTION.md'),
                      help='the markdown report')
  parser.add_argument('--figure', default=os.path.join(
      REPO, 'docs', 'reproduction_opis_vs_recall.png'),
                      help='the OPIS-vs-Recall@1 figure')
  parser.add_argument('--compilation_cache', default=None,
                      help="JAX's persistent compilation cache (default: "
                      "WORKDIR/jax_cache; '' for none)")
  args = parser.parse_args(argv)
  args.losses = _loss_list(args.losses, parser, '--losses')
  args.sweep_losses = _loss_list(args.sweep_losses, parser, '--sweep_losses')
  for flag, value, low in (('--seeds', args.seeds, 1),
                           ('--steps', args.steps, 1),
                           ('--image_size', args.image_size, 8),
                           ('--sweep_seeds', args.sweep_seeds, 1)):
    if value < low:
      parser.error(f'{flag} must be at least {low}, got {value}.')
  if args.compilation_cache is None:
    args.compilation_cache = os.path.join(args.workdir, 'jax_cache')
  return args


# --- Runs ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: a base loss, with or without TCM, one seed.

  Attributes:
    loss: the base loss's registry name.
    tcm: whether TCM is added.
    seed: `config.seed` (initialisation and batch sampling).
    margins: TCM's (m+, m-); None for the config's (the paper's).
  """
  loss: str
  tcm: bool
  seed: int
  margins: tuple[float, float] | None = None

  @property
  def variant(self) -> str:
    """'base', 'tcm', or 'tcm_mp0.8_mn0.3' for other margins."""
    if not self.tcm:
      return 'base'
    if self.margins is None:
      return 'tcm'
    return f'tcm_mp{self.margins[0]:g}_mn{self.margins[1]:g}'

  @property
  def name(self) -> str:
    """The run's folder name under the workdir."""
    return f'{self.loss}-{self.variant}-seed{self.seed}'


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config(steps: int, image_size: int) -> ml_collections.ConfigDict:
  """`configs/digits.py` at the study's budget, before the loss is chosen.

  The learning-rate milestones stay at the same fractions of the run as in
  `configs/digits.py`; there is no evaluation or checkpoint before the end.
  """
  config = _open_world(train.load_config(CONFIG_FILE))
  fractions = [m / config.train.num_epochs for m in config.optimizer.milestones]
  config.input.image_size = image_size
  epochs = steps / train.create_inputs(config).steps_per_epoch
  config.optimizer.milestones = tuple(round(f * epochs, 6) for f in fractions)
  config.train.num_steps = steps
  config.train.eval_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.train.progress_bar = False
  return config


def _open_world(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`configs/digits.py`'s recipe on the open-world split: 0-4 / 5-9.

  The default run is closed-set; the study keeps the open-world split and
  batches of the five training digits x 16 it was run with.
  """
  config.dataset.name = 'digits'
  config.input.classes_per_batch = 5
  config.input.samples_per_class = 16
  return config


def reference_steps() -> int:
  """The length of `configs/digits.py`'s recipe on the study's split."""
  config = _open_world(train.load_config(CONFIG_FILE))
  return math.ceil(config.train.num_epochs
                   * train.create_inputs(config).steps_per_epoch)


def run_config(base: ml_collections.ConfigDict,
               spec: RunSpec) -> ml_collections.ConfigDict:
  """The config of one run: `base` with its loss, TCM switch and seed."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = spec.seed
  config.loss.name = spec.loss
  config.loss.tcm.enabled = spec.tcm
  if spec.margins is not None:
    config.loss.tcm.margin_pos, config.loss.tcm.margin_neg = spec.margins
  return config


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def read_result(path: str, config_dict: dict[str, Any]) -> dict[str, Any]:
  """A finished run's `result.json`, checked to be of this very config."""
  with open(path) as f:
    result = json.load(f)
  # A run saved before tcm_jax added a config key ran at its default.
  saved = _flat(train.with_default_keys(result['config']))
  now = _flat(config_dict)
  changed = sorted(k for k in set(saved) | set(now)
                   if saved.get(k) != now.get(k))
  if changed:
    raise ValueError(
        f'{path} holds a run of another config (it differs in '
        f'{", ".join(changed)}); use another --workdir.')
  return result


def train_run(spec: RunSpec, config: ml_collections.ConfigDict,
              run_dir: str) -> dict[str, Any]:
  """Trains and evaluates one run; writes and returns its `result.json`."""
  start = time.perf_counter()
  try:
    metrics = train.train_and_evaluate(config, run_dir,
                                       devices=jax.local_devices()[:1])
  except (ValueError, train.NonFiniteLossError) as e:
    raise RuntimeError(
        f'Run {spec.name} failed: {e} The finished runs are kept in '
        f'{os.path.dirname(run_dir)}; run the same command to go on.') from e
  result = dict(loss=spec.loss, tcm=spec.tcm, seed=spec.seed,
                margin_pos=config.loss.tcm.margin_pos,
                margin_neg=config.loss.tcm.margin_neg,
                seconds=time.perf_counter() - start, metrics=metrics,
                config=checkpoint_lib.json_safe(config.to_dict()))
  path = os.path.join(run_dir, RESULT_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(path + '.tmp', path)  # a kill leaves no half-written result
  return result


class Progress:
  """One line per run: its numbers, its time, the count and the ETA."""

  def __init__(self, total: int, to_train: int):
    self.total, self.to_train = total, to_train
    self.done, self.trained_seconds = 0, []

  def report(self, spec: RunSpec, result: dict[str, Any],
             reused_from: str | None) -> None:
    self.done += 1
    m = result['metrics']
    if reused_from is None:
      self.trained_seconds.append(result['seconds'])
      left = self.to_train - len(self.trained_seconds)
      eta = f'ETA {left * np.mean(self.trained_seconds) / 60:5.1f} min'
      how = f'{result["seconds"]:5.1f} s'
    else:
      how, eta = 'read back, not retrained', f'({reused_from})'
    tcm = ('TCM ' + (f'm+ {spec.margins[0]:g} m- {spec.margins[1]:g}'
                     if spec.margins else '') if spec.tcm else 'no TCM')
    print(f'[{self.done:3d}/{self.total}] {spec.loss:18s} {tcm:18s} seed '
          f'{spec.seed}  R@1 {m["recall_at_1"]:.4f}  OPIS {m["opis"]:.5f}  '
          f'{how}  {eta}', flush=True)


def run_all(specs: Sequence[RunSpec], base: ml_collections.ConfigDict,
            workdir: str) -> dict[RunSpec, dict[str, Any]]:
  """Every run of `specs` (each once), trained or read back, in order."""
  specs = list(dict.fromkeys(specs))
  paths = {s: os.path.join(workdir, s.name, RESULT_FILE) for s in specs}
  progress = Progress(len(specs),
                      sum(not os.path.exists(p) for p in paths.values()))
  results = {}
  for spec in specs:
    config = run_config(base, spec)
    if os.path.exists(paths[spec]):
      results[spec] = read_result(
          paths[spec], checkpoint_lib.json_safe(config.to_dict()))
      progress.report(spec, results[spec], paths[spec])
    else:
      results[spec] = train_run(spec, config, os.path.dirname(paths[spec]))
      progress.report(spec, results[spec], None)
  return results


def study_specs(losses: Iterable[str], seeds: int) -> list[RunSpec]:
  """Each loss without and with TCM, seeds 0 .. seeds-1 (a config's seeds
  together, so that they reuse its compiled step)."""
  return [RunSpec(loss, tcm, seed) for loss in losses for tcm in (False, True)
          for seed in range(seeds)]


def sweep_specs(losses: Iterable[str], seeds: int,
                margins: Sequence[tuple[float, float]]) -> list[RunSpec]:
  """The sweep's runs: without TCM, TCM at the paper's and at other margins."""
  specs = []
  for loss in losses:
    specs += [RunSpec(loss, False, s) for s in range(seeds)]
    specs += [RunSpec(loss, True, s) for s in range(seeds)]
    specs += [RunSpec(loss, True, s, m) for m in margins
              for s in range(seeds)]
  return specs


# --- Statistics ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean, standard deviation (ddof 1; 0 for one value) and count."""
  mean: float
  std: float
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> 'Stat':
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return cls(float(values.mean()), std, len(values))

  def format(self, digits: int) -> str:
    if self.n == 1:
      return f'{self.mean:.{digits}f}'
    return f'{self.mean:.{digits}f} ± {self.std:.{digits}f}'


def group_stats(results: Iterable[dict[str, Any]]) -> dict[str, Stat]:
  """Per metric, the `Stat` of a group of runs."""
  results = list(results)
  return {key: Stat.of([r['metrics'][key] for r in results])
          for key, _, _ in METRICS}


def relative_change(without: Stat, with_: Stat) -> float:
  """(with - without) / without, in percent."""
  return 100.0 * (with_.mean - without.mean) / without.mean


def clear_change(a: Stat, b: Stat) -> bool:
  """Whether the means differ by more than twice the difference's standard
  error (False with a single seed: nothing to compare against)."""
  if a.n < 2 or b.n < 2:
    return False
  return abs(b.mean - a.mean) > 2 * math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def _star(a: Stat, b: Stat) -> str:
  return ' *' if clear_change(a, b) else ''


# --- The report ------------------------------------------------------------------


@dataclasses.dataclass
class LossSummary:
  """A base loss's stats without and with TCM (paper margins)."""
  loss: str
  without: dict[str, Stat]
  with_tcm: dict[str, Stat]

  @property
  def opis_change(self) -> float:
    return relative_change(self.without['opis'], self.with_tcm['opis'])

  @property
  def eps_opis_change(self) -> float:
    return relative_change(self.without['eps_opis'], self.with_tcm['eps_opis'])

  @property
  def recall_change(self) -> float:
    """In percentage points."""
    return 100.0 * (self.with_tcm['recall_at_1'].mean
                    - self.without['recall_at_1'].mean)


def summarise(results: dict[RunSpec, dict[str, Any]], losses: Sequence[str],
              seeds: Sequence[int], margins=None) -> list[LossSummary]:
  """Per loss, the stats over `seeds` without TCM and with TCM at `margins`."""
  def stats(loss, tcm, m):
    return group_stats(results[RunSpec(loss, tcm, s, m)] for s in seeds)
  return [LossSummary(loss, stats(loss, False, None),
                      stats(loss, True, margins)) for loss in losses]


def results_table(summaries: Sequence[LossSummary]) -> list[str]:
  """The markdown table: two rows per loss, TCM's changes on the second."""
  lines = ['| base loss | TCM | ' + ' | '.join(t for _, t, _ in METRICS)
           + ' | OPIS change | eps-OPIS change | R@1 change |',
           '|---|---|' + '---:|' * (len(METRICS) + 3)]
  for s in summaries:
    for label, stats in (('without', s.without), ('with', s.with_tcm)):
      cells = [stats[k].format(d) for k, _, d in METRICS]
      if label == 'without':
        changes = ['', '', '']
      else:
        changes = [
            f'{s.opis_change:+.1f}%{_star(s.without["opis"], stats["opis"])}',
            f'{s.eps_opis_change:+.1f}%'
            f'{_star(s.without["eps_opis"], stats["eps_opis"])}',
            f'{s.recall_change:+.2f} pt'
            f'{_star(s.without["recall_at_1"], stats["recall_at_1"])}']
      lines.append(f'| {s.loss} | {label} | ' + ' | '.join(cells + changes)
                   + ' |')
  return lines


def _losses_phrase(names: Sequence[str]) -> str:
  return ', '.join(names) if names else 'none'


def _clearly(summaries: Sequence[LossSummary], key: str,
             sign: int) -> list[str]:
  """The losses whose `key` moved in the direction `sign` under TCM by more
  than twice the standard error."""
  return [s.loss for s in summaries
          if np.sign(s.with_tcm[key].mean - s.without[key].mean) == sign
          and clear_change(s.without[key], s.with_tcm[key])]


def summary_paragraph(summaries: Sequence[LossSummary]) -> str:
  """What the table says, in numbers: OPIS, eps-OPIS and R@1 under TCM."""
  n = len(summaries)
  opis = [s.opis_change for s in summaries]
  lower = [s.loss for s in summaries if s.opis_change < 0]
  clearly_lower = _clearly(summaries, 'opis', -1)
  clearly_higher = _clearly(summaries, 'opis', +1)
  eps_lower = sum(s.eps_opis_change < 0 for s in summaries)
  recall = [s.recall_change for s in summaries]
  recall_up = _clearly(summaries, 'recall_at_1', +1)
  recall_down = _clearly(summaries, 'recall_at_1', -1)
  return (
      f'At the paper\'s margins, TCM lowered the mean OPIS for {len(lower)} of '
      f'{n} base losses (median relative change {np.median(opis):+.1f}%, from '
      f'{min(opis):+.1f}% to {max(opis):+.1f}%); the decrease exceeds twice '
      f'its standard error for {len(clearly_lower)} '
      f'({_losses_phrase(clearly_lower)}), and OPIS rose beyond it for '
      f'{len(clearly_higher)} ({_losses_phrase(clearly_higher)}). '
      f'eps-OPIS fell for {eps_lower} of {n}. Recall@1 changed by '
      f'{np.median(recall):+.2f} points in the median (from '
      f'{min(recall):+.2f} to {max(recall):+.2f}); beyond twice its standard '
      f'error it rose for {len(recall_up)} ({_losses_phrase(recall_up)}) and '
      f'fell for {len(recall_down)} ({_losses_phrase(recall_down)}).')


def helped(summaries: Sequence[LossSummary]) -> bool:
  """Whether TCM lowered the mean OPIS for most of the base losses."""
  return sum(s.opis_change < 0 for s in summaries) > len(summaries) / 2


def sweep_section(results: dict[RunSpec, dict[str, Any]], args,
                  paper: tuple[float, float], tcm_helped: bool) -> list[str]:
  """The margin sweep: why it ran, its table, the best margins per loss."""
  losses, seeds = args.sweep_losses, args.sweep_seeds
  margins = args.sweep_margins
  verdict = (
      'TCM lowered the mean OPIS for most base losses at the paper\'s margins; '
      'this sweep shows how that depends on the margins.' if tcm_helped else
      'TCM did not lower the mean OPIS for most base losses at the paper\'s '
      'margins, so this sweep tries others.')
  lines = [
      '## Margin sweep', '', verdict,
      f'TCM at m+/m- {", ".join(f"{p:g}/{n:g}" for p, n in margins)} on '
      f'{", ".join(losses)}, seeds 0-{seeds - 1}, same budget; the rows '
      'without TCM and at the paper\'s margins are the study\'s runs of '
      'these seeds. Changes are against the same seeds without TCM.', '',
      '| base loss | m+ | m- | R@1 | OPIS | eps-OPIS | OPIS change | R@1 '
      'change |', '|---|---:|---:|---:|---:|---:|---:|---:|']
  for loss in losses:
    for pair in (None, *margins):
      s = summarise(results, [loss], range(seeds), pair)[0]
      if pair is None:
        lines.append(f'| {loss} | no TCM | | '
                     f'{s.without["recall_at_1"].format(4)} | '
                     f'{s.without["opis"].format(5)} | '
                     f'{s.without["eps_opis"].format(5)} | | |')
      m_pos, m_neg = pair or paper
      lines.append(
          f'| {loss} | {m_pos:g} | {m_neg:g} | '
          f'{s.with_tcm["recall_at_1"].format(4)} | '
          f'{s.with_tcm["opis"].format(5)} | '
          f'{s.with_tcm["eps_opis"].format(5)} | {s.opis_change:+.1f}%'
          f'{_star(s.without["opis"], s.with_tcm["opis"])} | '
          f'{s.recall_change:+.2f} pt'
          f'{_star(s.without["recall_at_1"], s.with_tcm["recall_at_1"])} |')
  return lines + ['', best_margins_paragraph(results, losses, seeds, margins),
                  '']


def best_margins_paragraph(results, losses: Sequence[str], seeds: int,
                           margins: Sequence[tuple[float, float]]) -> str:
  """Per loss, the margins with the lowest mean OPIS, and its change."""
  parts = []
  for loss in losses:
    options = {m: summarise(results, [loss], range(seeds), m)[0]
               for m in (None, *margins)}
    best = min(options, key=lambda m: options[m].with_tcm['opis'].mean)
    s = options[best]
    where = ('the paper\'s margins' if best is None else
             f'm+ {best[0]:g}, m- {best[1]:g}')
    parts.append(f'{loss} at {where} ({s.opis_change:+.1f}%'
                 f'{_star(s.without["opis"], s.with_tcm["opis"])} against no '
                 f'TCM, R@1 {s.recall_change:+.2f} pt)')
  return 'Lowest mean OPIS with TCM: ' + '; '.join(parts) + '.'


def loss_defaults(name: str) -> str:
  """A base loss's registry defaults, as `key=value` (masks left out)."""
  if name in registry.PROXY_LOSSES:
    params = inspect.signature(registry.PROXY_LOSSES[name]).parameters.values()
    hyper = {p.name: p.default for p in params
             if p.kind == p.KEYWORD_ONLY and p.name != 'where'}
  else:
    hyper = registry.get(name).hyperparameters()
    if 'max_positives' in hyper:
      hyper['max_positives'] = 'K-1'  # set by train.create_objective
  return ', '.join(f'{k}={v}' for k, v in hyper.items())


def budget_lines(base: ml_collections.ConfigDict, args) -> list[str]:
  """The budget every run shares, from the config itself."""
  c = base
  model = ', '.join(f'{k}={v}' for k, v in c.model.to_dict().items()
                    if k != 'name')
  tcm = c.loss.tcm
  images = (c.train.num_steps * c.input.classes_per_batch
            * c.input.samples_per_class)
  return [
      f'- Model: `{c.model.name}` ({model}), trained from scratch.',
      f'- Input: {c.input.image_size} px digits (`{c.input.recipe}` recipe: '
      f'resize and random shifts), batches of {c.input.classes_per_batch} '
      f'classes x {c.input.samples_per_class} images.',
      f'- Optimizer: {c.optimizer.name}, learning rate '
      f'{c.optimizer.learning_rate:g} x {c.optimizer.decay_factor:g} at epochs '
      f'{", ".join(f"{m:g}" for m in c.optimizer.milestones)} (the same '
      f'fractions of the run as `configs/digits.py`), weight decay '
      f'{c.optimizer.weight_decay:g}; {c.train.num_steps} steps '
      f'({images} images; `configs/digits.py` trains {reference_steps()} '
      'steps at 16 px).',
      f'- TCM: m+ {tcm.margin_pos:g}, m- {tcm.margin_neg:g}, lambda+ '
      f'{tcm.lambda_pos:g}, lambda- {tcm.lambda_neg:g} (the paper\'s).',
      f'- Seeds: 0-{args.seeds - 1} (initialisation and batch order); one '
      'CPU device.',
      '- Base losses at their registry defaults: ' + '; '.join(
          f'{n} ({loss_defaults(n)})' for n in args.losses) + '.',
  ]


def machine_lines(args, command: str, wall_seconds: float,
                  results: dict[RunSpec, dict[str, Any]],
                  trained: int) -> list[str]:
  """Command, machine, versions, date and times."""
  cpu = _load_module(os.path.join(REPO, 'benchmarks', '_machine.py')).cpu_name()
  train_minutes = sum(r['seconds'] for r in results.values()) / 60
  return [
      f'- Command: `{command}`',
      f'- Machine: {cpu}, {os.cpu_count()} cores, shared with other jobs '
      '(timings are noisy); JAX on CPU.',
      f'- Versions: Python {platform.python_version()}, jax {jax.__version__}, '
      f'flax {flax.__version__}.',
      f'- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} '
      'UTC.',
      f'- Wall time of this invocation: {wall_seconds / 60:.1f} min for '
      f'{len(results)} runs ({trained} trained now, {len(results) - trained} '
      f'read back from `{args.workdir}`); the runs\' own times add up to '
      f'{train_minutes:.1f} min, {60 * train_minutes / len(results):.1f} s a '
      'run, compilation and evaluation included.',
  ]


def figure_runs(results: dict[RunSpec, dict[str, Any]],
                specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
  """The rows `plots.plot_opis_vs_recall` takes, one per study run."""
  return [dict(loss=s.loss, tcm=s.tcm, **results[s]['metrics'])
          for s in specs]


def per_run_section(results: dict[RunSpec, dict[str, Any]],
                    workdir: str) -> list[str]:
  """Every run's own numbers, by folder, collapsed."""
  lines = ['## Every run', '', '<details><summary>'
           f'{len(results)} runs: the folder under `{workdir}` and its final '
           'metrics (from its `metrics.json`)</summary>', '',
           '| run | ' + ' | '.join(t for _, t, _ in METRICS) + ' | seconds |',
           '|---|' + '---:|' * (len(METRICS) + 1)]
  for spec, result in results.items():
    m = result['metrics']
    lines.append(f'| {spec.name} | ' + ' | '.join(
        f'{m[k]:.{d}f}' for k, _, d in METRICS)
                 + f' | {result["seconds"]:.1f} |')
  return lines + ['', '</details>', '']


def write_figure(runs: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """`plots.plot_opis_vs_recall`, its legend moved beside the axes (with
  nine losses it would cover the points)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(8.5, 4.6))
  ax = fig.add_subplot()
  plots.plot_opis_vs_recall(runs, title=title, ax=ax)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def caveats(base: ml_collections.ConfigDict) -> list[str]:
  """What the budget does not show, with its numbers."""
  c = base
  return [
      '## What this does and does not show', '',
      f'Every run trains a {c.model.name} (width {c.model.width:g}) from '
      f'scratch for {c.train.num_steps} steps on {c.input.image_size} px '
      'digits; the paper fine-tunes ImageNet-pretrained ResNet-50 and '
      'ViT-B/16 for tens of epochs on CUB-200, Cars-196, SOP and '
      'iNaturalist, with hundreds to thousands of test classes. This study says how TCM behaves at this '
      'small scale and with these margins; it does not test the paper\'s '
      'numbers. With 5 test classes, OPIS and eps-OPIS vary by tens of '
      'percent between seeds, so only the changes marked `*` stand out from '
      'that noise. A rerun on the same machine repeats a run\'s numbers; '
      'with another number of CPU threads (seen when pinning the process to '
      'one core) XLA sums in another order and they move slightly, within '
      'the spread over seeds.', '']


def write_report(args, command: str, base: ml_collections.ConfigDict,
                 results: dict[RunSpec, dict[str, Any]], trained: int,
                 wall_seconds: float) -> str:
  """Writes the figure and the markdown; returns the markdown."""
  os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
  write_figure(figure_runs(results, study_specs(args.losses, args.seeds)),
               args.figure,
               f'Open-world digits (train 0-4, test 5-9), {args.seeds} '
               f'seed{"s" if args.seeds > 1 else ""} per loss')
  summaries = summarise(results, args.losses, range(args.seeds))
  figure = os.path.relpath(os.path.abspath(args.figure),
                           os.path.dirname(os.path.abspath(args.out)))
  paper = (base.loss.tcm.margin_pos, base.loss.tcm.margin_neg)
  lines = [HEADER, '## How it was made', '',
           *machine_lines(args, command, wall_seconds, results, trained),
           '', 'The budget, the same for every run:', '',
           *budget_lines(base, args), '',
           '## Results', '',
           f'Mean ± standard deviation over {args.seeds} seed(s), TCM at the '
           f'paper\'s margins (m+ {paper[0]:g}, m- {paper[1]:g}). OPIS change '
           'and eps-OPIS change: (with - without) / without, of the means; '
           'R@1 change: with - without, in percentage points. `*`: the '
           'difference is larger than twice its standard error.', '',
           *results_table(summaries), '', summary_paragraph(summaries), '',
           f'![OPIS against Recall@1]({figure})', '',
           'Each point is one run (circles without TCM, stars with it); each '
           'arrow goes from a loss\'s mean without TCM to its mean with TCM. '
           'Lower is more threshold-consistent, further right retrieves '
           'better.', '']
  if args.sweep:
    lines += sweep_section(results, args, paper, helped(summaries))
  elif not helped(summaries):
    lines += ['TCM did not lower the mean OPIS for most base losses at the '
              'paper\'s margins; `--sweep` tries other margins.', '']
  lines += caveats(base) + per_run_section(results, args.workdir)
  text = '\n'.join(lines)
  with open(args.out, 'w') as f:
    f.write(text)
  return text


# --- Main ------------------------------------------------------------------------


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Drops Orbax's note that a save carries no metrics (saves by design)."""
  return 'did not provide metrics' not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> str:
  """Runs the study (and sweep), writes the report; returns its path."""
  start = time.perf_counter()
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  command = shlex.join(['python', 'scripts/reproduce_digits.py', *argv])
  logging.getLogger('absl').addFilter(_quiet_orbax)
  if args.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', args.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  base = base_config(args.steps, args.image_size)
  specs = study_specs(args.losses, args.seeds)
  if args.sweep:
    specs += sweep_specs(args.sweep_losses, args.sweep_seeds,
                         args.sweep_margins)
  to_train = {s for s in specs
              if not os.path.exists(os.path.join(args.workdir, s.name,
                                                 RESULT_FILE))}
  print(f'{len(set(specs))} runs of {args.steps} steps at {args.image_size} px '
        f'in {args.workdir}: {len(to_train)} to train, '
        f'{len(set(specs)) - len(to_train)} finished already (read back).',
        flush=True)
  results = run_all(specs, base, args.workdir)
  write_report(args, command, base, results, len(to_train),
               time.perf_counter() - start)
  print(f'Wrote {args.out} and {args.figure} in '
        f'{(time.perf_counter() - start) / 60:.1f} min.')
  return args.out


if __name__ == '__main__':
  main()
