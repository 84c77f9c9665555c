"""Speed and memory of the streamed evaluation, against baselines in the same run.

1. `evaluate_embeddings` (both passes: ranking, histograms, per-class counts
   at 101 thresholds) at N = 20,000, D = 128, against the blockwise similarity
   matmuls alone over the same blocks (target: at most 3x).
2. The same at N = 5,000 against a straightforward NumPy implementation of
   the same metrics (full matrix, per-class and per-threshold comparisons,
   a full sort per query) (target: at least 20x faster).
3. Peak memory of `evaluate_embeddings` at N = 100,000, in a fresh process
   (target: under 2 GB).

  python benchmarks/metrics.py                 # all three
  python benchmarks/metrics.py --parts 1 2     # skip the long N = 100,000 run
"""

import argparse
import math
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


def part_matmul(n, dim, repeats, block_size=None):
  z, labels = clustered(n, dim)
  source = advanced.source_from_embeddings(z, labels, block_size=block_size)
  block = source.rows_per_block
  matmul_pass(z, labels, block)  # compile
  evaluate = lambda: metrics.evaluate_embeddings(  # pylint: disable=g-long-lambda
      z, labels, far_range=FAR_RANGE, ks=KS, block_size=block)
  evaluate()  # compile
  base = min(timed(lambda: matmul_pass(z, labels, block))[0]
             for _ in range(repeats))
  full = min(timed(evaluate)[0] for _ in range(repeats))
  print(f'1. N = {n}, D = {dim}, block = {block} rows: matmuls alone '
        f'{base:.2f} s, evaluation {full:.2f} s, ratio {full / base:.2f} '
        f'(target <= 3): {"ok" if full / base <= 3 else "MISSED"}')


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


def part_memory(n, dim):
  code = (
      'import resource, sys, time\n'
      'import jax\n'
      'sys.path.insert(0, "benchmarks")\n'
      'from metrics import clustered\n'
      'from tcm_jax import metrics\n'
      f'z, labels = clustered({n}, {dim}, seed=2)\n'
      'start = time.perf_counter()\n'
      'r = metrics.evaluate_embeddings(z, labels)\n'
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
  print(f'3. N = {n}, D = {dim}: peak RSS {peak / 2**30:.2f} GiB{on_device} '
        f'in {seconds:.1f} s (OPIS {opis:.4f}); target < 2 GB: '
        f'{"ok" if max(peak, device_peak) < 2e9 else "MISSED"}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--parts', type=int, nargs='+', default=[1, 2, 3])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--block_sizes', type=int, nargs='+', default=[None],
                      help='query rows per block in part 1 (default: the '
                           "library's, about 2**21 similarities per block on "
                           'CPU and 2**26 on accelerators)')
  args = parser.parse_args()
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'{jax.device_count()} device(s)')
  if 1 in args.parts:
    for block_size in args.block_sizes:
      part_matmul(20_000, 128, args.repeats, block_size)
  if 2 in args.parts:
    part_numpy(5_000, 128)
  if 3 in args.parts:
    part_memory(100_000, 128)


if __name__ == '__main__':
  main()
