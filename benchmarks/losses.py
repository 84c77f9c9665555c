"""Each base loss, and what adding TCM costs, measured in the same run.

For B embeddings of dimension D (class-balanced: B/4 classes x 4), times
`jit(value_and_grad)` of each base loss from embeddings (cosine similarity,
loss, gradient to the embeddings), then of base + TCM computed from the same
similarity matrix (`tcm_jax.losses.objective`), and prints the ratio
(base + TCM) / base. TCM reuses the similarity, so it should add little.

  python benchmarks/losses.py                  # B = 1024, D = 512
  python benchmarks/losses.py --batch 256 --repeats 20
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax import losses
from tcm_jax import similarity
from tcm_loss import median_seconds  # benchmarks/ is the script's folder

# The ranking losses score at most the 3 positives of a 4-per-class batch.
BASES = {
    'contrastive': {},
    'triplet (all)': dict(mining='all'),
    'triplet (batch_hard)': dict(mining='batch_hard'),
    'triplet (semi_hard)': dict(mining='semi_hard'),
    'multi_similarity': {},
    'smooth_ap': dict(max_positives=3),
    'recall_at_k': dict(max_positives=3),
}


# Proxy losses: one proxy per class of the batch.
PROXIES = {
    'normalized_softmax': {},
    'cosface': {},
    'arcface': {},
    'proxy_anchor': {},
}


def proxy_step(name, with_tcm):
  objective = losses.objective(name, tcm={} if with_tcm else None,
                               **PROXIES[name])

  def loss(z, labels, proxies):
    total, _ = objective(z, labels, {'proxies': proxies})
    return total

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))


def registry_name(label):
  return label.split(' ')[0]


def step(label, with_tcm):
  objective = losses.objective(registry_name(label),
                               tcm={} if with_tcm else None, **BASES[label])

  def loss(z, labels):
    total, _ = objective(similarity.cosine_similarity(z), labels)
    return total

  return jax.jit(jax.value_and_grad(loss))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=1024)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(args.batch, args.dim)), jnp.float32)
  labels = jnp.asarray(rng.permutation(np.arange(args.batch) // 4))
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'B = {args.batch}, D = {args.dim}, median of {args.repeats} alternated samples')
  print(f'{"base loss":<22} {"base ms":>9} {"+TCM ms":>9} {"ratio":>6}')
  for label in BASES:
    base, both = median_seconds([step(label, False), step(label, True)],
                                (z, labels), args.repeats)
    print(f'{label:<22} {1e3 * base:>9.1f} {1e3 * both:>9.1f} '
          f'{both / base:>6.2f}')
  proxies = jnp.asarray(rng.normal(size=(args.batch // 4, args.dim)),
                        jnp.float32)
  for name in PROXIES:
    base, both = median_seconds([proxy_step(name, False),
                                 proxy_step(name, True)],
                                (z, labels, proxies), args.repeats)
    print(f'{name:<22} {1e3 * base:>9.1f} {1e3 * both:>9.1f} '
          f'{both / base:>6.2f}')


if __name__ == '__main__':
  main()
