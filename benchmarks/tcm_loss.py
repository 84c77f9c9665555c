"""Speed and memory of the TCM loss against its floor, measured in the same run.

For each batch size B (embeddings [B, D], P x 4 class-balanced labels) this
times `jit(value_and_grad)` of `tcm_loss_from_embeddings` and of a bare
`sum(z @ z.T)`: the similarity matrix and its gradient, which any pair loss
must compute. It prints the ratio (target: at most 1.5) and the memory XLA
plans for the TCM step (target at B = 4096: well under 2 GB).

  python benchmarks/tcm_loss.py                     # B in 256 1024 4096, D = 512
  python benchmarks/tcm_loss.py --sizes 512 --dim 128 --repeats 20
"""

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tcm_jax

RATIO_TARGET = 1.5
MEMORY_TARGET_BYTES = 2 * 2**30


def floor_loss(z, labels):
  del labels
  return jnp.sum(z @ z.T)


def seconds_per_call(fn, args, calls):
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def median_seconds(fns, args, repeats, min_sample_seconds=0.05):
  """Median seconds per call of each fn, timed in alternation.

  Alternating the functions within every repeat spreads machine noise evenly
  over them; each sample runs enough calls to last `min_sample_seconds`.
  """
  calls = []
  for fn in fns:
    seconds_per_call(fn, args, 2)  # compiles and warms up
    once = seconds_per_call(fn, args, 3)
    calls.append(max(1, int(min_sample_seconds / once)))
  samples = [[] for _ in fns]
  for _ in range(repeats):
    for fn, n, out in zip(fns, calls, samples):
      out.append(seconds_per_call(fn, args, n))
  return [statistics.median(s) for s in samples]


def planned_bytes(fn, args):
  """Arguments + outputs + temporaries of the compiled step, as XLA plans it."""
  stats = fn.lower(*args).compile().memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[256, 1024, 4096])
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()

  tcm_step = jax.jit(jax.value_and_grad(tcm_jax.tcm_loss_from_embeddings))
  floor_step = jax.jit(jax.value_and_grad(floor_loss))
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'D = {args.dim}, median of {args.repeats} alternated samples')
  print(f'{"B":>6} {"floor ms":>10} {"tcm ms":>10} {"ratio":>7} '
        f'{"tcm MiB":>9}  verdict')
  ok = True
  for b in args.sizes:
    rng = np.random.default_rng(b)
    z = jnp.asarray(rng.normal(size=(b, args.dim)), jnp.float32)
    labels = jnp.asarray(rng.permutation(np.arange(b) // 4))
    floor, tcm = median_seconds([floor_step, tcm_step], (z, labels),
                                args.repeats)
    memory = planned_bytes(tcm_step, (z, labels))
    ratio = tcm / floor
    passed = ratio <= RATIO_TARGET and memory < MEMORY_TARGET_BYTES
    ok &= passed
    print(f'{b:>6} {1e3 * floor:>10.2f} {1e3 * tcm:>10.2f} {ratio:>7.2f} '
          f'{memory / 2**20:>9.1f}  {"ok" if passed else "MISSED"}')
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
  print(f'process peak RSS: {peak:.0f} MiB; targets: ratio <= {RATIO_TARGET}, '
        f'planned memory < {MEMORY_TARGET_BYTES / 2**30:.0f} GiB: '
        f'{"all met" if ok else "MISSED"}')


if __name__ == '__main__':
  main()
