"""Independent NumPy references for the metric tests: full matrix, loops.

Written straight from the definitions (docs/definitions.md), sharing no code
with tcm_jax. Distances are `1 - S` in float32, as the library computes them, so
that counts at the thresholds can be compared exactly.
"""

import math

import numpy as np


def distances(similarity):
  return np.float32(1.0) - np.asarray(similarity, np.float32)


def _pairs(similarity, labels, ref_labels):
  self_pairs = ref_labels is None
  labels = np.asarray(labels)
  ref_labels = labels if self_pairs else np.asarray(ref_labels)
  return distances(similarity), labels, ref_labels, self_pairs


def class_rates(similarity, labels, ref_labels, thresholds):
  """(classes, tpr, tnr) of the classes with a positive and a negative pair."""
  d, labels, ref_labels, self_pairs = _pairs(similarity, labels, ref_labels)
  classes, tprs, tnrs = [], [], []
  for c in np.unique(np.concatenate([labels, ref_labels])):
    pos, neg = [], []
    for i in np.flatnonzero(labels == c):
      for j in range(len(ref_labels)):
        if self_pairs and i == j:
          continue
        (pos if ref_labels[j] == c else neg).append(d[i, j])
    if not pos or not neg:
      continue
    pos, neg = np.array(pos), np.array(neg)
    classes.append(c)
    tprs.append([np.mean(pos <= t) for t in thresholds])
    tnrs.append([np.mean(neg > t) for t in thresholds])
  return np.array(classes), np.array(tprs), np.array(tnrs)


def utility(tpr, tnr, beta=1.0):
  out = np.zeros_like(tpr, dtype=np.float64)
  for index in np.ndindex(tpr.shape):
    p, n = tpr[index], tnr[index]
    denominator = beta**2 * n + p
    out[index] = 0.0 if denominator == 0 else (1 + beta**2) * n * p / denominator
  return out


def opis(utility_curves):
  return float(np.mean(np.var(utility_curves, axis=0)))


def eps_opis(utility_curves, epsilon):
  num_classes = utility_curves.shape[0]
  num_worst = min(max(math.ceil(round(epsilon * num_classes, 9)), 1),
                  num_classes - 1)
  order = np.argsort(utility_curves.mean(axis=1), kind='stable')
  worst, rest = order[:num_worst], order[num_worst:]
  gap = utility_curves[worst].mean(axis=0) - utility_curves[rest].mean(axis=0)
  return float(np.mean(gap**2))


def negative_distances(similarity, labels, ref_labels=None):
  d, labels, ref_labels, _ = _pairs(similarity, labels, ref_labels)
  return np.sort(d[labels[:, None] != ref_labels[None, :]])


def far_quantile(similarity, labels, far, ref_labels=None):
  """The ceil(far * n)-th smallest negative distance."""
  negatives = negative_distances(similarity, labels, ref_labels)
  needed = max(1, math.ceil(round(far * len(negatives), 9)))
  return float(negatives[needed - 1])


def retrieval(similarity, labels, ks, ref_labels=None):
  """(recall_at_k dict, map_at_r, r_precision, excluded queries)."""
  _, labels, ref_labels, self_pairs = _pairs(similarity, labels, ref_labels)
  s = np.asarray(similarity, np.float32)  # what the library ranks
  hits, aps, rps, excluded = {k: [] for k in ks}, [], [], 0
  for i in range(len(labels)):
    candidates = [j for j in range(len(ref_labels))
                  if not (self_pairs and j == i)]
    # Most similar first; ties by reference index, lowest first.
    ranked = sorted(candidates, key=lambda j: (-s[i, j], j))
    relevant = [ref_labels[j] == labels[i] for j in ranked]
    r = sum(relevant)
    if r == 0:
      excluded += 1
      continue
    for k in ks:
      hits[k].append(any(relevant[:k]))
    precision_sum, found = 0.0, 0
    for rank, rel in enumerate(relevant[:r], start=1):
      if rel:
        found += 1
        precision_sum += found / rank
    aps.append(precision_sum / r)
    rps.append(sum(relevant[:r]) / r)
  recall = {k: float(np.mean(v)) for k, v in hits.items()}
  return recall, float(np.mean(aps)), float(np.mean(rps)), excluded
