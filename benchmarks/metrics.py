"""Speed and memory of the streamed evaluation, against baselines in the same run.

Both engines of `evaluate_embeddings`: the two-pass one (`engine='exact'`)
and the one-pass one (`engine='histogram'`: per-class distance histograms).

1. At N = 20,000, D = 128: the two-pass evaluation (ranking, histograms,
   per-class counts at 101 thresholds) against the blockwise JAX similarity
   matmuls alone over the same blocks (target: at most 3x); the one-pass
   evaluation against the NumPy matmul floor (the products alone, blocks of
   1,024 query rows; target: at most 2x).
2. The two-pass evaluation at N = 5,000 against a straightforward NumPy
   implementation of the same metrics (full matrix, per-class and
   per-threshold comparisons, a full sort per query) (target: at least 20x
   faster).
3. Peak memory of each engine at N = 100,000, each in a fresh process
   (target: under 2 GB).
4. Side by side with the peers, each contender in a fresh process on the
   same embeddings (N = 5,000, 20,000 and 100,000 by default), alternated
   over the repeats: tcm_jax's whole evaluation with each engine (retrieval,
   OPIS, calibration); pytorch-metric-learning's `AccuracyCalculator` with
   faiss (R@1, R-precision, MAP@R only); a faiss k-NN search with the same
   three metrics in NumPy; and the matmul floor (the blockwise similarity
   products alone) with NumPy's BLAS and with JAX. Each prints its seconds
   (the first call in a fresh process: compilation included) and its peak
   RSS, and the three retrieval metrics are compared with
   pytorch-metric-learning's. Targets for the one-pass engine: at most 2x
   the NumPy floor, and faster than pytorch-metric-learning. Needs the
   `benchmarks` extra (torch's CPU build first, see BENCHMARKS.md).
5. The one-pass engine on the default device (`product='jax'`) at N =
   100,000 and 1,000,000 against the device's matmuls alone over the same
   blocks (target on an accelerator: at most 1.5x), with its peak device
   memory.
6. The full report at N = 100,000 (`--report_size`), each in a fresh
   process: the evaluation as it was (each engine, with the class bootstrap
   and the figure's curves) against the evaluation with the verification
   operating points (TAR at 4 FARs, EER, AUC, each class's own threshold)
   and their 1,000-resample bootstrap intervals, all off one pass without a
   cut (`keep_histograms=True`). Targets: at most 1.2x the one-pass
   evaluation without them, peak RSS under 2 GB.

  python benchmarks/metrics.py                 # parts 1 to 3
  python benchmarks/metrics.py --parts 1 2     # skip the long N = 100,000 run
  python benchmarks/metrics.py --parts 4 --sizes 5000 20000 100000
  python benchmarks/metrics.py --parts 5    # on a GPU: N up to 1,000,000
  python benchmarks/metrics.py --parts 6    # the report with operating points
"""

import argparse
import importlib
import json
import math
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from tcm_jax import metrics
from tcm_jax import similarity
from tcm_jax.metrics import advanced

FAR_RANGE = (1e-3, 1e-1)
KS = (1, 2, 4, 8)
FLOOR_ROWS = 1024  # the floors' query rows per block, whatever N


def clustered(n, dim, per_class=40, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) // per_class
  centres = rng.normal(size=(labels.max() + 1, dim))
  z = centres[labels] + 1.5 * rng.normal(size=(n, dim))
  return z.astype(np.float32), labels


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def matmul_pass(z, labels, block_size):
  """The blockwise similarity matmuls alone, over the evaluation's blocks."""
  source = advanced.source_from_embeddings(z, labels, block_size=block_size)
  cosine = jax.jit(lambda q, r: similarity.cosine_similarity(
      q, r, precision=jax.lax.Precision.HIGHEST))
  out = None
  for block in advanced.blocks(source):
    out = cosine(block.queries, block.refs)
  return jax.block_until_ready(out)


def numpy_evaluation(z, labels, num_thresholds=101):
  """A straightforward NumPy implementation of the same metrics."""
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = zn @ zn.T
  d = 1.0 - s
  n = len(labels)
  same = labels[:, None] == labels[None, :]
  off_diagonal = ~np.eye(n, dtype=bool)
  negatives = np.sort(d[~same])
  bounds = [negatives[max(1, math.ceil(f * len(negatives))) - 1]
            for f in FAR_RANGE]
  thresholds = np.linspace(*bounds, num_thresholds)
  utilities = []
  for c in np.unique(labels):
    rows = labels == c
    pos = d[rows][:, rows & True][off_diagonal[rows][:, rows]]
    neg = d[rows][:, ~rows].ravel()
    tpr = np.array([np.mean(pos <= t) for t in thresholds])
    tnr = np.array([np.mean(neg > t) for t in thresholds])
    with np.errstate(invalid='ignore'):
      utilities.append(np.nan_to_num(2 * tpr * tnr / (tpr + tnr)))
  utility = np.array(utilities)
  opis = np.mean(np.var(utility, axis=0))
  np.fill_diagonal(s, -np.inf)
  order = np.argsort(-s, axis=1, kind='stable')
  relevant = same[np.arange(n)[:, None], order]
  recall = {k: np.mean(relevant[:, :k].any(axis=1)) for k in KS}
  r = same.sum(axis=1) - 1
  precision = np.cumsum(relevant, axis=1) / np.arange(1, n + 1)
  within = np.arange(n)[None, :] < r[:, None]
  map_at_r = np.mean((precision * relevant * within).sum(axis=1) / r)
  return opis, recall, map_at_r


def numpy_floor(z):
  """The NumPy matmul floor: the similarity products alone, in blocks of
  `FLOOR_ROWS` query rows against all references."""
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  out = None
  for start in range(0, len(zn), FLOOR_ROWS):
    out = zn[start:start + FLOOR_ROWS] @ zn.T
  return float(out[0, 0])


def part_matmul(n, dim, repeats, block_size=None):
  z, labels = clustered(n, dim)
  source = advanced.source_from_embeddings(z, labels, block_size=block_size)
  block = source.rows_per_block
  matmul_pass(z, labels, block)  # compile
  evaluate = lambda engine: metrics.evaluate_embeddings(  # pylint: disable=g-long-lambda
      z, labels, far_range=FAR_RANGE, ks=KS, block_size=block, engine=engine)
  evaluate('exact')  # compile
  evaluate('histogram')
  base = min(timed(lambda: matmul_pass(z, labels, block))[0]
             for _ in range(repeats))
  floor = min(timed(lambda: numpy_floor(z))[0] for _ in range(repeats))
  full = min(timed(lambda: evaluate('exact'))[0] for _ in range(repeats))
  one = min(timed(lambda: evaluate('histogram'))[0] for _ in range(repeats))
  print(f'1. N = {n}, D = {dim}, block = {block} rows: the JAX matmuls alone '
        f'{base:.2f} s, two-pass evaluation {full:.2f} s, ratio '
        f'{full / base:.2f} (target <= 3): '
        f'{"ok" if full / base <= 3 else "MISSED"}; the NumPy floor '
        f'{floor:.2f} s, one-pass evaluation {one:.2f} s, ratio '
        f'{one / floor:.2f} (target <= 2): '
        f'{"ok" if one / floor <= 2 else "MISSED"}')


def part_numpy(n, dim):
  z, labels = clustered(n, dim, seed=1)
  metrics.evaluate_embeddings(z, labels)  # compile
  ours, result = timed(lambda: metrics.evaluate_embeddings(z, labels, ks=KS))
  theirs, (opis, recall, map_at_r) = timed(lambda: numpy_evaluation(z, labels))
  agree = (abs(opis - result.opis) < 1e-3
           and abs(recall[1] - result.retrieval.recall_at_k[1]) < 1e-3
           and abs(map_at_r - result.retrieval.map_at_r) < 1e-3)
  print(f'2. N = {n}, D = {dim}: NumPy {theirs:.2f} s, tcm_jax {ours:.2f} s, '
        f'speed-up {theirs / ours:.1f}x (target >= 20): '
        f'{"ok" if theirs / ours >= 20 else "MISSED"}; results agree: {agree}')


def part_memory(n, dim, engine):
  code = (
      'import resource, sys, time\n'
      'import jax\n'
      'sys.path.insert(0, "benchmarks")\n'
      'from metrics import clustered\n'
      'from tcm_jax import metrics\n'
      f'z, labels = clustered({n}, {dim}, seed=2)\n'
      'start = time.perf_counter()\n'
      f'r = metrics.evaluate_embeddings(z, labels, engine={engine!r})\n'
      'stats = jax.devices()[0].memory_stats() or {}\n'
      'print(time.perf_counter() - start, r.opis,\n'
      '      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,\n'
      '      stats.get("peak_bytes_in_use", -1))\n')
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout.split()
  seconds, opis, peak_kib = float(out[0]), float(out[1]), int(out[2])
  peak, device_peak = peak_kib * 1024, int(out[3])
  # On an accelerator the blocks live in device memory (run with
  # XLA_PYTHON_CLIENT_PREALLOCATE=false so that its peak means something).
  on_device = (f', device peak {device_peak / 2**30:.2f} GiB'
               if device_peak >= 0 else '')
  print(f'3. N = {n}, D = {dim}, engine {engine!r}: peak RSS {peak / 2**30:.2f} GiB{on_device} '
        f'in {seconds:.1f} s (OPIS {opis:.4f}); target < 2 GB: '
        f'{"ok" if max(peak, device_peak) < 2e9 else "MISSED"}')


# --- 4. Side by side with the peers ----------------------------------------

PEER_DIM = 128


def _retrieval_numpy(neighbour_labels, labels, counts):
  """R@1, R-precision and MAP@R from each query's ranked neighbours
  (self excluded), `counts[i]` the size of query i's class."""
  r = counts - 1
  evaluated = r > 0
  relevant = neighbour_labels == labels[:, None]
  ranks = np.arange(1, relevant.shape[1] + 1)
  within = ranks[None, :] <= r[:, None]
  hits = relevant & within
  precision = np.cumsum(hits, axis=1) / ranks
  map_at_r = (precision * hits).sum(axis=1)[evaluated] / r[evaluated]
  r_precision = hits.sum(axis=1)[evaluated] / r[evaluated]
  return {'recall_at_1': float(relevant[evaluated, 0].mean()),
          'r_precision': float(r_precision.mean()),
          'map_at_r': float(map_at_r.mean())}


def _contender_tcm_jax(z, labels, engine='exact'):
  result = metrics.evaluate_embeddings(z, labels, far_range=FAR_RANGE, ks=KS,
                                       engine=engine)
  retrieval = result.retrieval
  return {'recall_at_1': float(retrieval.recall_at_k[1]),
          'r_precision': float(retrieval.r_precision),
          'map_at_r': float(retrieval.map_at_r), 'opis': float(result.opis)}


def _contender_pml(z, labels):
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning.utils import accuracy_calculator  # pylint: disable=import-outside-toplevel
  calculator = accuracy_calculator.AccuracyCalculator(
      include=('precision_at_1', 'r_precision',
               'mean_average_precision_at_r'),
      k='max_bin_count', device=torch.device('cpu'))
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)  # its default: L2 k-NN
  out = calculator.get_accuracy(torch.from_numpy(zn), torch.from_numpy(labels))
  return {'recall_at_1': float(out['precision_at_1']),
          'r_precision': float(out['r_precision']),
          'map_at_r': float(out['mean_average_precision_at_r'])}


def _contender_faiss_numpy(z, labels):
  import faiss  # pylint: disable=import-outside-toplevel
  zn = np.ascontiguousarray(z / np.linalg.norm(z, axis=1, keepdims=True))
  counts = np.bincount(labels)[labels]
  index = faiss.IndexFlatIP(zn.shape[1])
  index.add(zn)
  _, found = index.search(zn, int(counts.max()))  # the query itself first
  neighbours = np.where(found == np.arange(len(z))[:, None], -1, found)
  order = np.argsort(neighbours == -1, axis=1, kind='stable')  # self last
  neighbours = np.take_along_axis(neighbours, order, axis=1)[:, :-1]
  return _retrieval_numpy(labels[neighbours], labels, counts)


def _contender_matmul_numpy(z, labels):
  del labels
  return {'last': numpy_floor(z)}


def _contender_matmul_jax(z, labels):
  del labels
  zn = jax.device_put(z / np.linalg.norm(z, axis=1, keepdims=True))
  product = jax.jit(lambda q, r: q @ r.T)
  pad = -len(z) % FLOOR_ROWS
  queries = jax.numpy.pad(zn, ((0, pad), (0, 0)))
  out = None
  for start in range(0, len(queries), FLOOR_ROWS):
    out = product(queries[start:start + FLOOR_ROWS], zn)
  return {'last': float(jax.block_until_ready(out)[0, 0])}


CONTENDERS = {
    'tcm_jax one-pass': lambda z, labels: _contender_tcm_jax(
        z, labels, 'histogram'),
    'tcm_jax two-pass': _contender_tcm_jax,
    'pml+faiss': _contender_pml,
    'faiss+numpy': _contender_faiss_numpy,
    'matmul numpy': _contender_matmul_numpy,
    'matmul jax': _contender_matmul_jax,
}


# What each contender imports, outside its timing.
_IMPORTS = {'pml+faiss': ('torch',
                          'pytorch_metric_learning.utils.accuracy_calculator'),
            'faiss+numpy': ('faiss',)}


def run_contender(name, n):
  """One contender in this process: a JSON line of its seconds, peak RSS
  and metric values."""
  for module in _IMPORTS.get(name, ()):
    importlib.import_module(module)
  z, labels = clustered(n, PEER_DIM, seed=3)
  seconds, values = timed(lambda: CONTENDERS[name](z, labels))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({'seconds': seconds, 'peak_bytes': peak, **values}))


def part_peers(sizes, repeats, names=tuple(CONTENDERS)):
  for n in sizes:
    names = set(names) | {'pml+faiss', 'matmul numpy', 'tcm_jax one-pass'}
    runs = {name: [] for name in CONTENDERS if name in names}
    for _ in range(repeats):  # alternated: each round runs every contender
      for name in runs:
        out = subprocess.run(
            [sys.executable, __file__, '--contender', name, '--n', str(n)],
            check=True, capture_output=True, text=True).stdout
        runs[name].append(json.loads(out.strip().splitlines()[-1]))
    best = {name: min(r, key=lambda x: x['seconds'])
            for name, r in runs.items()}
    floor = best['matmul numpy']['seconds']
    reference = best['pml+faiss']
    print(f'4. N = {n}, D = {PEER_DIM}, best of {repeats} '
          '(seconds, ratio to the NumPy matmul floor, peak RSS):')
    for name, run in best.items():
      agree = ''
      if 'map_at_r' in run:
        gaps = [abs(run[k] - reference[k])
                for k in ('recall_at_1', 'r_precision', 'map_at_r')]
        agree = f', largest gap to pml {max(gaps):.1e}'
      print(f'   {name:16s} {run["seconds"]:8.2f} s  '
            f'{run["seconds"] / floor:6.2f}x  '
            f'{run["peak_bytes"] / 2**30:5.2f} GiB{agree}')
    one = best['tcm_jax one-pass']['seconds']
    print(f'   one-pass: {one / floor:.2f}x the floor (target <= 2): '
          f'{"ok" if one / floor <= 2 else "MISSED"}; '
          f'{reference["seconds"] / one:.2f}x the speed of pml (target > 1): '
          f'{"ok" if one < reference["seconds"] else "MISSED"}')


# --- 5. The one-pass engine on the default device, up to N = 1,000,000 -----


def jax_floor(z, rows):
  """The similarity products alone on the default device, `rows` query rows
  per block."""
  zn = jax.device_put(z / np.linalg.norm(z, axis=1, keepdims=True))
  product = jax.jit(lambda q, r: q @ r.T)
  queries = jax.numpy.pad(zn, ((0, -len(z) % rows), (0, 0)))
  out = None
  for start in range(0, len(queries), rows):
    out = product(queries[start:start + rows], zn)
  return float(jax.block_until_ready(out)[0, 0])


def part_device(sizes, repeats):
  """`engine='histogram', product='jax'` against the device's matmul floor
  over the same blocks, and the device's peak memory (run with
  XLA_PYTHON_CLIENT_PREALLOCATE=false on a GPU)."""
  for n in sizes:
    z, labels = clustered(n, PEER_DIM, seed=4)
    source = advanced.source_from_embeddings(z, labels)
    rows = source.rows_per_block
    evaluate = lambda: advanced.evaluate_source(  # pylint: disable=g-long-lambda
        source, far_range=FAR_RANGE, ks=KS, engine='histogram',
        product='jax')
    first = timed(evaluate)[0]  # compilation included
    stats = jax.devices()[0].memory_stats() or {}  # before the floor's
    peak = stats.get('peak_bytes_in_use', -1)
    floor = min(timed(lambda: jax_floor(z, rows))[0] for _ in range(repeats))
    best = min(timed(evaluate)[0] for _ in range(repeats))
    print(f'5. N = {n}, D = {PEER_DIM}, {rows} rows per block on '
          f'{jax.devices()[0].device_kind}: floor {floor:.2f} s, one-pass '
          f'{best:.2f} s ({first:.2f} s with compilation), ratio '
          f'{best / floor:.2f} (target <= 1.5 on an accelerator), device '
          'peak ' + (f'{peak / 2**30:.2f} GiB' if peak >= 0 else 'n/a'))


# --- 6. The full report, operating points and their intervals included -----

_REPORT = {
    'exact': ('e = metrics.evaluate_embeddings(z, labels)\n'
              'metrics.class_bootstrap(e, num_resamples=1000)\n'
              'report.plot_curves(e, z, labels)\n'),
    'one-pass': ('e = metrics.evaluate_embeddings(z, labels, engine="histogram")\n'
                 'metrics.class_bootstrap(e, num_resamples=1000)\n'
                 'report.plot_curves(e, z, labels)\n'),
    'one-pass + operating points': (
        'e = metrics.evaluate_embeddings(z, labels, engine="histogram",\n'
        '                                keep_histograms=True)\n'
        'metrics.class_bootstrap(e, num_resamples=1000)\n'
        'report.plot_curves(e, z, labels)\n'
        'h = e.histograms\n'
        'advanced.operating_points_from_histograms(h)\n'
        'advanced.operating_point_intervals(h, num_resamples=1000)\n'),
}


def part_report(n, dim):
  seconds = {}
  for name, work in _REPORT.items():
    code = ('import resource, sys, time\n'
            'sys.path.insert(0, "benchmarks")\n'
            'from metrics import clustered\n'
            'from tcm_jax import metrics, report\n'
            'from tcm_jax.metrics import advanced\n'
            f'z, labels = clustered({n}, {dim}, seed=2)\n'
            'start = time.perf_counter()\n' + work +
            'print(time.perf_counter() - start,\n'
            '      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n')
    out = subprocess.run([sys.executable, '-c', code], check=True,
                         capture_output=True, text=True).stdout.split()
    seconds[name], peak = float(out[0]), int(out[1]) * 1024
    print(f'6. N = {n}: {name}: {seconds[name]:.1f} s, peak RSS '
          f'{peak / 2**30:.2f} GiB (target < 2 GB: '
          f'{"ok" if peak < 2e9 else "MISSED"})')
  ratio = seconds['one-pass + operating points'] / seconds['one-pass']
  print(f'6. operating points and intervals: {ratio:.2f}x the one-pass report '
        f'(target <= 1.2x: {"ok" if ratio <= 1.2 else "MISSED"}), '
        f'{seconds["one-pass + operating points"] / seconds["exact"]:.2f}x '
        'the two-pass one')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--parts', type=int, nargs='+', default=[1, 2, 3])
  parser.add_argument('--sizes', type=int, nargs='+',
                      default=[5_000, 20_000, 100_000],
                      help='the N of part 4')
  parser.add_argument('--contender', choices=sorted(CONTENDERS),
                      help=argparse.SUPPRESS)  # (part 4's child processes)
  parser.add_argument('--n', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--contenders', nargs='+', choices=sorted(CONTENDERS),
                      default=list(CONTENDERS),
                      help="part 4's contenders (default: all; pml+faiss, "
                           'matmul numpy and tcm_jax one-pass always run: '
                           'the others are compared with them)')
  parser.add_argument('--device_sizes', type=int, nargs='+',
                      default=[100_000, 1_000_000], help='the N of part 5')
  parser.add_argument('--report_size', type=int, default=100_000,
                      help='the N of part 6')
  parser.add_argument('--block_sizes', type=int, nargs='+', default=[None],
                      help='query rows per block in part 1 (default: the '
                           "library's, about 2**21 similarities per block on "
                           'CPU and 2**26 on accelerators)')
  args = parser.parse_args()
  if args.contender:
    run_contender(args.contender, args.n)
    return
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'{jax.device_count()} device(s)')
  if 1 in args.parts:
    for block_size in args.block_sizes:
      part_matmul(20_000, 128, args.repeats, block_size)
  if 2 in args.parts:
    part_numpy(5_000, 128)
  if 3 in args.parts:
    for engine in ('exact', 'histogram'):
      part_memory(100_000, 128, engine)
  if 4 in args.parts:
    part_peers(args.sizes, args.repeats, args.contenders)
  if 5 in args.parts:
    part_device(args.device_sizes, args.repeats)
  if 6 in args.parts:
    part_report(args.report_size, 128)


if __name__ == '__main__':
  main()
