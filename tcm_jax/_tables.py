"""Metric names and values as reports print them (`tcm_jax.report`)."""

from __future__ import annotations


# The report's names of the metrics (`metric_label`) and their decimals.
_LABELS = {'map_at_r': 'MAP@R', 'r_precision': 'R-precision', 'opis': 'OPIS',
           'mean_utility': 'mean utility', 'mean_tpr': 'mean TPR'}
_DECIMALS = {'opis': 5, 'eps_opis': 5}  # the others: 4


def metric_label(key: str, epsilon: float | None = None) -> str:
  """The report's name of a metric key (`recall_at_1` is Recall@1).

  Args:
    key: a key of `load_results`' metrics (or of `config.metric_names`).
    epsilon: the worst-class fraction of eps-OPIS, to name it as the report
      does (`0.1-OPIS`); unknown: `eps-OPIS`.

  Returns:
    The label; an unknown key as it is.

  Examples:
    >>> from tcm_jax import report
    >>> [report.metric_label(k, 0.1) for k in ('recall_at_4', 'map_at_r',
    ...                                         'eps_opis', 'loss')]
    ['Recall@4', 'MAP@R', '0.1-OPIS', 'loss']
  """
  if key.startswith('recall_at_'):
    return f'Recall@{key[len("recall_at_"):]}'
  if key == 'eps_opis':
    return 'eps-OPIS' if epsilon is None else f'{epsilon:g}-OPIS'
  return _LABELS.get(key, key)


def metric_value(key: str, value: float | None) -> str:
  """A metric's value as the report writes it (`-` when there is none).

  Examples:
    >>> from tcm_jax import report
    >>> report.metric_value('recall_at_1', 0.9), report.metric_value(
    ...     'opis', 0.0123), report.metric_value('opis', None)
    ('0.9000', '0.01230', '-')
  """
  if value is None:
    return '-'
  return f'{value:.{_DECIMALS.get(key, 4)}f}'


def results_table(values: dict[str, float],
                  baselines: dict[str, dict[str, float]] | None = None, *,
                  column: str = 'model',
                  epsilon: float | None = None) -> str:
  """A markdown table of evaluation metrics, as printed at the end of a run.

  Rows are named and valued as in `report.md` (`metric_label`,
  `metric_value`); `python -m tcm_jax.evaluate` prints the same table.

  Args:
    values: the model's metrics.
    baselines: optional metrics of raw-input baselines by name (as in
      `metrics.json['baselines']`), one more column each.
    column: the heading of the `values` column.
    epsilon: eps-OPIS's worst-class fraction, for its label.

  Examples:
    >>> from tcm_jax import report
    >>> print(report.results_table({'recall_at_1': 0.9, 'opis': 0.0123}))
    | metric | model |
    |---|---|
    | Recall@1 | 0.9000 |
    | OPIS | 0.01230 |
    >>> print(report.results_table({'recall_at_1': 0.9, 'eps_opis': 0.05},
    ...                            {'pixels': {'recall_at_1': 0.8}},
    ...                            epsilon=0.1))
    | metric | model | pixels |
    |---|---|---|
    | Recall@1 | 0.9000 | 0.8000 |
    | 0.1-OPIS | 0.05000 | - |
  """
  baselines = baselines or {}
  lines = ['| ' + ' | '.join(['metric', column, *baselines]) + ' |',
           '|---' * (2 + len(baselines)) + '|']
  for key, value in values.items():
    cells = [value] + [baseline.get(key) for baseline in baselines.values()]
    lines.append(f'| {metric_label(key, epsilon)} | ' + ' | '.join(
        metric_value(key, v) for v in cells) + ' |')
  return '\n'.join(lines)
