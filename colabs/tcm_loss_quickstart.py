# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Add the TCM loss to a JAX training loop
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tcm-jax/tcm_jax/blob/main/colabs/tcm_loss_quickstart.ipynb)
#
# A metric-learning model is deployed with one global distance threshold, but
# common losses leave some classes tight and others spread out, so that one
# threshold accepts too much for some classes and rejects too much for others.
# The Threshold-Consistent Margin loss (TCM; Zhang et al., ICLR 2024,
# [arXiv 2307.04047](https://arxiv.org/abs/2307.04047)) is a regulariser added
# to any base loss: it pulls up the *hard positive* pairs (same class, cosine
# similarity below a margin `m+`) and pushes down the *hard negative* pairs
# (different classes, similarity above a margin `m-`), which evens out the
# classes' distance distributions.
#
# This notebook shows what `tcm_jax.tcm_loss` computes on a small batch, then
# adds it to a plain JAX + optax training loop in one line, and logs its parts
# while training. It runs on a CPU in well under a minute.

# %%
import os, sys
if 'google.colab' in sys.modules:  # Colab: fetch and install tcm_jax
  import subprocess
  if not os.path.isdir('/content/tcm_jax'):  # not again after "Restart session"
    subprocess.run(['git', 'clone', '--depth=1', 'https://github.com/tcm-jax/tcm_jax', '/content/tcm_jax'], check=True)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '/content/tcm_jax'], check=True)
  os.chdir('/content/tcm_jax')  # configs/ and colabs/ live in the checkout
elif os.path.basename(os.getcwd()) == 'colabs':  # local Jupyter starts in colabs/
  os.chdir('..')  # the repository root, where configs/ is

# %% tags=["parameters"]
NUM_STEPS = 600          # training steps of the loop below
SAMPLES_PER_CLASS = 16   # K: a batch is the 5 training digits x K images
HIDDEN = 128             # width of the toy encoder
EMBEDDING_DIM = 32
LEARNING_RATE = 1e-3
LOG_EVERY = 25           # steps between two logged values of the loss parts
SEED = 0

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import tcm_jax
from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax.data import datasets
from tcm_jax.data.sampler import ClassBalancedSampler

# %% [markdown]
# ## The hard pairs of a batch
#
# `tcm_loss(similarity, labels)` takes a batch's `[Q, R]` cosine similarity
# matrix `S` and its integer labels (with no references given, the batch is
# compared with itself and the self pairs are left out). With the paper's
# margins `m+ = 0.9` and `m- = 0.5`:
#
# - a **hard positive** is a same-class pair with `S <= m+`: not yet tight
#   enough;
# - a **hard negative** is a pair of different classes with `S >= m-`: too
#   close;
# - `L_tcm = lambda+ * mean over hard positives of (m+ - S)
#   + lambda- * mean over hard negatives of (S - m-)`.
#
# Each part is averaged over its own hard pairs, so it keeps its strength
# however few hard pairs remain, and a part with none is exactly 0. Pairs are
# ordered: `(i, j)` and `(j, i)` both count. Here is a batch of 4 classes x 5
# embeddings that share a common direction, as real embeddings often do:

# %%
MARGIN_POS, MARGIN_NEG = 0.9, 0.5  # the paper's margins (tcm_loss's defaults)
rng = np.random.default_rng(SEED)
labels = np.repeat(np.arange(4), 5)
z = (0.8 + rng.normal(size=(4, 8)))[labels] + 0.4 * rng.normal(size=(20, 8))
s = tcm_jax.cosine_similarity(z)                 # [20, 20], float32
masks = tcm_jax.losses.advanced.pair_masks(s, labels)  # 0/1, no self pairs
hard_pos = (masks.positive > 0) & (s <= MARGIN_POS)
hard_neg = (masks.negative > 0) & (s >= MARGIN_NEG)

fig, ax = plt.subplots(figsize=(7.5, 3.2))
ax.hist(np.asarray(s)[masks.positive > 0], bins=40, range=(-1, 1), alpha=0.6,
        label='positive pairs (same class)')
ax.hist(np.asarray(s)[masks.negative > 0], bins=40, range=(-1, 1), alpha=0.6,
        label='negative pairs')
ax.axvline(MARGIN_POS, color='tab:blue', ls='--',
           label=f'm+ = {MARGIN_POS}: positives left of it are hard')
ax.axvline(MARGIN_NEG, color='tab:orange', ls='--',
           label=f'm- = {MARGIN_NEG}: negatives right of it are hard')
ax.set_xlabel('cosine similarity S')
ax.set_ylabel('pairs')
ax.legend(fontsize=8, loc='upper left')
plt.show()

# %% [markdown]
# The loss, its two parts and the fraction of pairs that are hard come from
# the library's sufficient statistics (`tcm_jax.losses.advanced`:
# `tcm_statistics`, sums and counts over the hard pairs; `tcm_diagnostics`,
# what a trainer logs):

# %%
stats = tcm_jax.losses.advanced.tcm_statistics(
    s, labels, margin_pos=MARGIN_POS, margin_neg=MARGIN_NEG)
parts = tcm_jax.losses.advanced.tcm_diagnostics(stats)
loss = tcm_jax.tcm_loss(s, labels, margin_pos=MARGIN_POS, margin_neg=MARGIN_NEG)
print(f'hard positives: {int(stats.hard_pos_count)} of {int(stats.pos_count)} '
      f'positive pairs ({float(parts["hard_pos_fraction"]):.0%})')
print(f'hard negatives: {int(stats.hard_neg_count)} of {int(stats.neg_count)} '
      f'negative pairs ({float(parts["hard_neg_fraction"]):.0%})')
print(f'positive part: mean of (m+ - S) over hard positives = '
      f'{float(parts["tcm_pos"]):.4f}')
print(f'negative part: mean of (S - m-) over hard negatives = '
      f'{float(parts["tcm_neg"]):.4f}')
print(f'tcm_loss = 1.0 * {float(parts["tcm_pos"]):.4f} + 1.0 * '
      f'{float(parts["tcm_neg"]):.4f} = {float(loss):.4f}')
# The same numbers from the masks drawn above:
assert int(stats.hard_pos_count) == int(hard_pos.sum())
assert np.isclose(parts['tcm_pos'], jnp.mean((MARGIN_POS - s)[hard_pos]))
assert np.isclose(parts['tcm_neg'], jnp.mean((s - MARGIN_NEG)[hard_neg]))

# %% [markdown]
# Only the hard pairs get a gradient: `-lambda+ / #hard positives` on each
# hard positive (a descent step raises its similarity) and
# `+lambda- / #hard negatives` on each hard negative (it lowers it). Easy
# pairs are left to the base loss.

# %%
grad = jax.grad(tcm_jax.tcm_loss)(s, labels)
print('non-zero gradient exactly on the hard pairs:',
      bool(jnp.array_equal(grad != 0, hard_pos | hard_neg)))
# The distinct values (an empty list where a batch has no hard pair of a kind):
print(f'on the {int(stats.hard_pos_count)} hard positives:',
      [round(float(g), 5) for g in np.unique(grad[hard_pos])])
print(f'on the {int(stats.hard_neg_count)} hard negatives:',
      [round(float(g), 5) for g in np.unique(grad[hard_neg])])

# %% [markdown]
# ## One line in your training loop
#
# Your model maps inputs to embeddings; your base loss trains it. TCM is one
# term added to that loss, over the same batch similarity:
#
# ```python
# s = tcm_jax.cosine_similarity(encode(params, x))
# loss = base_loss(s, labels) + tcm_jax.tcm_loss(s, labels)
# ```
#
# Below, the encoder is a two-layer network on the 8x8 handwritten digits of
# scikit-learn (shipped offline with it), trained on digits 0-4 and tested on
# the unseen digits 5-9, the open-world setting of the paper. The base loss
# here is Multi-Similarity from `tcm_jax.losses`; any loss works, a softmax
# over proxies included. Batches are P classes x K images
# (`ClassBalancedSampler`), so that every batch has positive pairs.

# %%
train_split = datasets.load_split('digits', 'train')   # digits 0-4, 901 images
test_split = datasets.load_split('digits', 'test')     # digits 5-9, 896 images
x_train = np.stack([train_split.image(i) for i in range(len(train_split))])
x_train = x_train.reshape(len(x_train), -1) / 255.0    # [901, 64] pixels
x_test = np.stack([test_split.image(i) for i in range(len(test_split))])
x_test = x_test.reshape(len(x_test), -1) / 255.0
sampler = ClassBalancedSampler(train_split.labels, classes_per_batch=5,
                               samples_per_class=SAMPLES_PER_CLASS, seed=SEED)

k1, k2 = jax.random.split(jax.random.key(SEED))
params = {'w1': jax.random.normal(k1, (64, HIDDEN)) / 8.0,
          'w2': jax.random.normal(k2, (HIDDEN, EMBEDDING_DIM)) / HIDDEN ** 0.5}
encode = lambda params, x: jax.nn.relu(x @ params['w1']) @ params['w2']

# %% [markdown]
# To log the parts as well, `tcm_jax.losses.objective(base, tcm={})` builds
# that sum from a registered base loss (with its paper's hyperparameters, and
# TCM's defaults `m+ = 0.9`, `m- = 0.5`) and returns it with its parts:
# `base`, `tcm`, `tcm_pos`, `tcm_neg` and the hard-pair fractions (the trainer
# in `tcm_jax.train` logs these). On the first batch it is exactly the base
# loss plus `tcm_loss`:

# %%
objective = tcm_jax.losses.objective('multi_similarity', tcm={})

rows = sampler.global_batch(0)
s_batch = tcm_jax.cosine_similarity(encode(params, x_train[rows]))
y_batch = train_split.labels[rows]
base_loss = tcm_jax.losses.multi_similarity_loss(s_batch, y_batch)
tcm_term = tcm_jax.tcm_loss(s_batch, y_batch)
total, parts = objective(s_batch, y_batch)
print(f'multi_similarity_loss {float(base_loss):.4f} + tcm_loss '
      f'{float(tcm_term):.4f} = {float(base_loss + tcm_term):.4f}; '
      f'objective: {float(total):.4f} (base {float(parts["base"]):.4f}, '
      f'tcm {float(parts["tcm"]):.4f})')
assert np.isclose(total, base_loss + tcm_term, rtol=1e-4)

# %% [markdown]
# The training loop is plain optax, with the objective as its loss: the
# embeddings and their similarity are computed once per step, and the parts
# come with the gradient (`has_aux=True`), so what is logged is what is
# trained on (the values before each logged step's update).

# %%
loss_fn = lambda params, x, labels: objective(
    tcm_jax.cosine_similarity(encode(params, x)), labels)  # (total, parts)
loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
optimizer = optax.adam(LEARNING_RATE)
opt_state = optimizer.init(params)
update = jax.jit(optimizer.update)

history = []
for step in range(NUM_STEPS):
  rows = sampler.global_batch(step)
  (total, parts), grads = loss_and_grad(params, x_train[rows],
                                        train_split.labels[rows])
  if step % LOG_EVERY == 0 or step == NUM_STEPS - 1:
    history.append({'step': step, 'total': float(total),
                    **{k: float(v) for k, v in parts.items()}})
  updates, opt_state = update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)

first, last = history[0], history[-1]
for key in ('base', 'tcm', 'hard_pos_fraction', 'hard_neg_fraction'):
  print(f'{key:>18}: {first[key]:.4f} at step 0 -> {last[key]:.4f} at step '
        f'{last["step"]}')

# %%
steps = [h['step'] for h in history]
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
for key in ('base', 'tcm_pos', 'tcm_neg'):
  left.plot(steps, [h[key] for h in history], label=key)
left.set_xlabel('step')
left.set_title('loss parts on the training batch')
left.legend()
for key in ('hard_pos_fraction', 'hard_neg_fraction'):
  right.plot(steps, [h[key] for h in history], label=key)
right.set_xlabel('step')
right.set_title('fraction of pairs that are hard')
right.legend()
plt.show()

# %% [markdown]
# ## How consistent is one threshold on the unseen classes?
#
# TCM is judged on classes never seen in training, with one threshold for all
# of them. `tcm_jax.metrics.evaluate_embeddings` gives the retrieval metrics
# and OPIS, the spread across classes of their utility (F1 of accepting
# positives and rejecting negatives) over the calibration range of
# thresholds: lower is more consistent. The figure shows each class's utility
# against the distance threshold `1 - cos`. The notebook
# `measure_threshold_consistency` explains these in detail.

# %%
result = metrics.evaluate_embeddings(encode(params, x_test), test_split.labels)
print(f'Recall@1 {result.retrieval.recall_at_k[1]:.3f}   '
      f'OPIS {result.opis:.5f}   {result.epsilon:g}-OPIS {result.eps_opis:.5f}')
plots.plot_utility_curves(result.curves, result.curves.calibration_range,
                          title='digits 5-9, unseen in training')
plt.show()

# %% [markdown]
# ## Next
#
# - Other base losses: `tcm_jax.losses.objective(name, tcm={})` with `name`
#   one of `contrastive`, `triplet`, `multi_similarity`, `smooth_ap`,
#   `recall_at_k`, or a proxy loss (`arcface`, `cosface`,
#   `normalized_softmax`, `proxy_anchor`), whose class proxies the objective
#   makes itself (`objective.init_params`).
# - Several devices: `tcm_jax.losses.sharded_tcm_loss` inside `jax.shard_map`
#   gives the loss of the global batch (all pairs across devices).
# - The paper's experiments, with encoders, data and checkpoints: the notebook
#   `train_on_tfds`, or `python -m tcm_jax.main --config configs/digits.py`.
