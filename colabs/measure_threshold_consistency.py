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
# # Measure threshold consistency: OPIS, eps-OPIS and one global threshold
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tcm-jax/tcm_jax/blob/main/colabs/measure_threshold_consistency.ipynb)
#
# A retrieval or verification model is deployed with one distance threshold:
# two samples match when their distance is below it. If the classes' distance
# distributions differ, that one threshold is strict for some classes and lax
# for others. Zhang et al. (ICLR 2024,
# [arXiv 2307.04047](https://arxiv.org/abs/2307.04047)) measure this with
# **OPIS**, the variance across classes of their utility over the range of
# thresholds a deployment would choose from, and reduce it with the TCM loss.
#
# This notebook measures it for **any embeddings**: an `.npz` file with
# `embeddings` `[N, D]` and integer `labels` `[N]`, from any framework. It
# computes OPIS and eps-OPIS, draws the per-class utility curves with the
# calibration range, and calibrates one global threshold to show each class's
# false accept and false reject rates there. Without a file of yours it makes
# a demo one from the handwritten digits.

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
# Your embeddings: a path to an .npz with `embeddings` [N, D] and `labels` [N]
# (optionally `ref_embeddings` and `ref_labels`, a separate gallery). None
# makes a demo file: the raw pixels of the handwritten digits 5-9.
EMBEDDINGS_NPZ = None
FAR_RANGE = (1e-3, 1e-1)  # the calibration range, as global false accept rates
TARGET_FAR = 1e-2         # the global FAR the one global threshold is set for
EPSILON = 0.1             # eps-OPIS: the fraction of worst classes

# %%
import os
import tempfile

from IPython.display import Image, display
import matplotlib.pyplot as plt
import numpy as np

from tcm_jax import metrics
from tcm_jax import plots
from tcm_jax import report
from tcm_jax.data import datasets
from tcm_jax.metrics import advanced

# %% [markdown]
# ## What is measured
#
# - **Distance** `d = 1 - cos`; a pair is accepted at threshold `t` when
#   `d <= t`.
# - **Per class** `c`, at each `t`: `TPR_c(t)`, the fraction of its positive
#   pairs accepted, and `TNR_c(t)`, the fraction of its negative pairs (its
#   samples against every other class) rejected. Its **utility** `U_c(t)` is
#   the F1 score of the two (F-beta, beta = 1). A class needs a positive
#   pair: two samples, or with a separate gallery a query and a reference of
#   its own (and a negative pair: a reference of another class).
# - The **calibration range** is the range of thresholds over which the
#   *global* false accept rate (over all negative pairs) goes from 1e-3 to
#   1e-1: the thresholds a deployment would choose from.
# - **OPIS** averages, over 101 thresholds spanning the range, the variance
#   across classes of `U_c(t)`. It is 0 when every class has the same utility
#   curve, so that one threshold treats them all alike (at most 0.25).
# - **eps-OPIS** (eps = 0.1) averages the squared gap between the mean utility
#   of the worst 10% of classes and that of the rest: it flags a few badly
#   served classes that the variance would average away.
#
# ## Seeing it on toy embeddings
#
# Two sets of 10 classes x 40 samples around the same class centres: in the
# first every class has the same spread; in the second the spreads go from
# 0.6 to 1.6. Retrieval hardly changes, but a threshold that suits the tight
# classes rejects many true matches of the spread ones: OPIS grows.

# %%
rng = np.random.default_rng(0)
toy_labels = np.repeat(np.arange(10), 40)
centres, noise = rng.normal(size=(10, 32)), rng.normal(size=(400, 32))
fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
for ax, (title, spread) in zip(axes, [('equal spreads', np.full(10, 1.0)),
                                      ('spreads 0.6 to 1.6',
                                       np.linspace(0.6, 1.6, 10))]):
  toy = metrics.evaluate_embeddings(
      centres[toy_labels] + spread[toy_labels, None] * noise, toy_labels)
  plots.plot_utility_curves(
      toy.curves, toy.curves.calibration_range, ax=ax,
      title=(f'{title}: R@1 {toy.retrieval.recall_at_k[1]:.3f}, '
             f'OPIS {toy.opis:.4f}, 0.1-OPIS {toy.eps_opis:.3f}'))
plt.show()

# %% [markdown]
# ## Your embeddings
#
# Save them with NumPy from any framework and set `EMBEDDINGS_NPZ` in the
# parameters cell to the file's path (on Colab: upload it in the Files panel,
# or mount Google Drive):
#
# ```python
# np.savez('embeddings.npz', embeddings=z.numpy(), labels=y.numpy())  # PyTorch, TensorFlow
# np.savez('embeddings.npz', embeddings=np.asarray(z), labels=np.asarray(y))  # JAX
# ```
#
# Use the classes the model was not trained on (the open-world test split):
# that is where a global threshold has to hold. Each query is compared with
# every other sample; add `ref_embeddings` and `ref_labels` to compare queries
# with a separate gallery instead.
#
# Without a file, the demo uses the 8x8 pixels of scikit-learn's handwritten
# digits 5-9 (896 images) as 64-dimensional embeddings: no model at all, a
# baseline. A trained model's embeddings of unseen classes come from
# `python -m tcm_jax.main --config configs/glyphs.py --workdir /tmp/glyphs`
# (1,427 kanji classes never seen in training; 8 minutes on a CPU, with the
# CJK fonts installed), which leaves them in `/tmp/glyphs/embeddings.npz`;
# `configs/digits.py` (closed-set digits, a minute) leaves its own the same
# way, and the notebook `train_on_tfds` does it for the paper's benchmarks.
# Files are written into a temporary folder only.

# %%
workdir = tempfile.mkdtemp(prefix='opis_')
if EMBEDDINGS_NPZ is None:
  test_split = datasets.load_split('digits', 'test')  # digits 5-9
  pixels = np.stack([test_split.image(i) for i in range(len(test_split))])
  EMBEDDINGS_NPZ = os.path.join(workdir, 'digits_pixels.npz')
  np.savez(EMBEDDINGS_NPZ, embeddings=pixels.reshape(len(pixels), -1) / 255.0,
           labels=test_split.labels)

arrays = report.load_npz(EMBEDDINGS_NPZ)  # checks the keys it needs
for key, value in arrays.items():
  print(f'{key}: {value.shape} {value.dtype}')
print(f'{len(np.unique(arrays["labels"]))} classes')

# %% [markdown]
# ## Every metric in one call
#
# `report.evaluate_arrays` computes everything (it streams blocks of queries
# against all references, so the `N x N` similarity is never built) and writes
# the report that `python -m tcm_jax.evaluate` writes: `report.md`,
# `metrics.json` and `utility_curves.png`. It returns the `Evaluation`, whose
# fields are used below; `tcm_jax.metrics.evaluate_embeddings` is the same
# without the files.

# %%
report_dir = os.path.join(workdir, 'report')
result = report.evaluate_arrays(
    arrays, report_dir, source_name=os.path.basename(EMBEDDINGS_NPZ),
    show_progress=False, far_range=FAR_RANGE, target_far=TARGET_FAR,
    epsilon=EPSILON)

low, high = result.curves.calibration_range.distance
# A class is left out of the per-class metrics when it has no positive pair
# (a single sample; with a separate gallery, no reference of its own class)
# or no negative pair.
print(f'{result.num_queries} queries, {len(result.curves.classes)} classes '
      f'evaluated, {len(result.excluded_classes)} left out (no positive or no '
      'negative pair)')
for k, recall in result.retrieval.recall_at_k.items():
  print(f'Recall@{k}: {recall:.4f}')
print(f'MAP@R: {result.retrieval.map_at_r:.4f}')
print(f'OPIS: {result.opis:.5f}')
print(f'{result.epsilon:g}-OPIS: {result.eps_opis:.5f}')
print(f'calibration range: distance {low:.4f} to {high:.4f}, where the global '
      f'FAR goes from {result.far_reached[0]:.2g} to {result.far_reached[1]:.2g}')

# %% [markdown]
# ## Per-class utility curves
#
# One grey line per class: its utility against the distance threshold, over
# the calibration range (shaded). The black line is the mean over classes,
# the orange band holds 80% of the classes, and the red lines are the worst
# classes, the eps-OPIS group. OPIS is the mean, over this range, of the
# variance of the grey lines at each threshold: a narrow band means that
# whichever threshold is chosen in the range, every class gets about the same
# trade-off.

# %%
worst = report.worst_classes(result)  # indices into result.curves.classes
plots.plot_utility_curves(result.curves, result.curves.calibration_range,
                          worst_classes=result.curves.classes[worst])
plt.show()

# %% [markdown]
# ## One global threshold, and what it does to each class
#
# In deployment the threshold is usually set for a target global false accept
# rate: here `TARGET_FAR` of all negative pairs accepted. `result.calibration`
# holds that threshold, the global FAR and FRR (false reject rate: positive
# pairs rejected) it gives, and each class's own FAR and FRR. With consistent
# thresholds they would be alike for every class; their spread is what a
# deployment with one threshold lives with.

# %%
calibration = result.calibration
print(f'threshold {calibration.threshold:.4f} (accept when 1 - cos <= it) for '
      f'a global FAR of {calibration.target_far:g}: global FAR '
      f'{calibration.far:.4f}, global FRR {calibration.frr:.4f}')
for name, spread in (('FAR', calibration.far_spread),
                     ('FRR', calibration.frr_spread)):
  print(f'per-class {name}: worst {spread["worst"]:.4f}, best '
        f'{spread["best"]:.4f}, standard deviation {spread["std"]:.4f}')

fig, ax = plt.subplots(figsize=(6.5, 4.5))
ax.scatter(calibration.class_far, calibration.class_frr, s=12, alpha=0.6,
           label='one class')
ax.scatter([calibration.far], [calibration.frr], marker='*', s=200,
           color='black', label='all pairs (global)')
if len(result.curves.classes) <= 30:  # few classes: name them
  for label, far, frr in zip(result.curves.classes, calibration.class_far,
                             calibration.class_frr):
    ax.annotate(str(label), (far, frr), xytext=(4, 4),
                textcoords='offset points', fontsize=8)
ax.set_xlabel('false accept rate (negative pairs accepted)')
ax.set_ylabel('false reject rate (positive pairs rejected)')
ax.set_title(f'Each class at the one global threshold '
             f'{calibration.threshold:.4f}')
ax.legend()
plt.show()

# %% [markdown]
# The worst classes, by mean utility over the calibration range, with their
# rates at the global threshold:

# %%
print('| class | mean utility | FAR | FRR |')
print('|---|---|---|---|')
for index in worst[:20]:
  print(f'| {result.curves.classes[index]} | '
        f'{result.curves.utility[index].mean():.4f} | '
        f'{calibration.class_far[index]:.4f} | '
        f'{calibration.class_frr[index]:.4f} |')

# %% [markdown]
# ## Operating points: what one threshold can deliver
#
# A verification system is specified by its operating points over all pairs:
# the true accept rate (TAR = 1 - FRR) at a given false accept rate
# (TAR@FAR), the equal error rate (EER, where FAR = FRR) and the ROC AUC. A
# target FAR is reported only when the set holds 30 negative pairs within it:
# fewer cannot measure so small a rate. Each class's own threshold (where its
# own FAR would reach the target) shows how far one global threshold is from
# what each class would need. The DET curve is FRR against FAR on log axes;
# its dot is the global threshold at `TARGET_FAR`.

# %%
points = metrics.operating_points(
    arrays['embeddings'], arrays['labels'], arrays.get('ref_embeddings'),
    arrays.get('ref_labels'), target_far=TARGET_FAR)
for point in points.tar_at_far:
  if point.resolvable:
    print(f'TAR@FAR={point.target_far:g}: {point.tar:.4f} (threshold '
          f'{point.threshold:.4f}, FAR reached {point.far:.2g})')
  else:
    print(f'TAR@FAR={point.target_far:g}: not resolvable with '
          f'{points.num_negative} negative pairs')
print(f'EER {points.eer:.4f} at distance {points.eer_threshold:.4f}; '
      f'ROC AUC {points.auc:.4f}')
spread = points.class_threshold_spread
print(f"each class's own threshold at FAR {TARGET_FAR:g}: from "
      f"{spread['min']:.4f} to {spread['max']:.4f}")
plots.plot_det_curve(points)
plt.show()

# %% [markdown]
# ## Does a threshold chosen on some classes hold for others?
#
# In deployment the threshold is chosen on the classes at hand and then
# serves new ones. `fold_transfer` deals the classes into folds and measures
# each fold at the threshold chosen on the others (the 10-fold protocol of
# face verification, over classes): the FAR each target actually reaches on
# unseen classes, and its spread over folds. Points on the diagonal hold their
# target; `calibration_transfer` does the same for two sets of your own (say,
# held-out samples of the training classes and the test classes).

# %%
num_classes = len(np.unique(arrays['labels']))
folds = metrics.fold_transfer(arrays['embeddings'], arrays['labels'],
                              folds=max(2, min(10, num_classes // 2)))
for j, target in enumerate(folds.target_fars):
  print(f'target FAR {target:g}: reached {folds.far[:, j].mean():.4f} +- '
        f'{folds.far[:, j].std():.4f} over {len(folds.fold_classes)} folds '
        f'of held-out classes')
plots.plot_calibration_transfer(folds)
plt.show()

# %% [markdown]
# ## How sure are these numbers?
#
# An open-world test set is a sample of classes: other classes would give
# other numbers. The class bootstrap draws the classes again with
# replacement (seeded, so reproducible) and reads a 95% interval off the
# resampled values. With few classes (the demo has 5) the intervals are wide:
# a difference in OPIS between two models means something only when it is
# larger than them.

# %%
intervals = metrics.class_bootstrap(result, num_resamples=500, seed=0)
point_intervals = advanced.operating_point_intervals(
    advanced.pair_histograms(advanced.source_from_embeddings(
        arrays['embeddings'], arrays['labels'], arrays.get('ref_embeddings'),
        arrays.get('ref_labels'))),
    target_far=TARGET_FAR, num_resamples=500, seed=0)
for name, interval in [*intervals.items(), *point_intervals.items()]:
  if name in ('opis', 'eps_opis', 'recall_at_1', 'eer', 'auc',
              'global_threshold') or name.startswith('tar_at_'):
    print(f'{name}: {interval.estimate:.4f}, 95% interval '
          f'[{interval.low:.4f}, {interval.high:.4f}]')

# %% [markdown]
# ## The report, and the same from the command line
#
# The report written above, and its figure (over three times the calibration
# range, so that the curves' shape around it shows):

# %%
with open(os.path.join(report_dir, 'report.md')) as f:
  print(f.read())
display(Image(os.path.join(report_dir, 'utility_curves.png')))

# %% [markdown]
# The same from a shell, for embeddings from anywhere:
#
# ```bash
# python -m tcm_jax.evaluate --embeddings embeddings.npz --out report_dir \
#     --far_range=1e-3,1e-1 --target_far=1e-2
# ```
#
# `--distance_range=0.2,0.6` sets the calibration range in distances instead,
# and `--epsilon`, `--beta` and `--num_thresholds` the rest of the
# definitions. To see what TCM changes, train with and without it (the
# notebooks `train_on_tfds` and `digits_toy`) and measure both.
