"""Independent NumPy references for the loss tests: loops over pairs, float64.

Written straight from the definitions (docs/definitions.md, "The TCM loss";
docs/tcm_loss.md), sharing no code with tcm_jax.
"""

import numpy as np


def cosine(x, y=None):
  x = np.asarray(x, np.float64)
  y = x if y is None else np.asarray(y, np.float64)
  nx = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  ny = np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
  return (x / nx) @ (y / ny).T


def hard_pairs(similarity, labels, ref_labels=None, margin_pos=0.9,
               margin_neg=0.5, where=None, ref_where=None):
  """Lists of (i, j) hard positive and hard negative pairs, and pair counts."""
  hard_pos, hard_neg, num_pos, num_neg = [], [], 0, 0
  for i, row, positives, refs in _all_queries(similarity, labels, ref_labels,
                                              where, ref_where):
    for j in refs:
      if j in positives:
        num_pos += 1
        if row[j] <= margin_pos:
          hard_pos.append((i, j))
      else:
        num_neg += 1
        if row[j] >= margin_neg:
          hard_neg.append((i, j))
  return hard_pos, hard_neg, num_pos, num_neg


def tcm(similarity, labels, ref_labels=None, margin_pos=0.9, margin_neg=0.5,
        lambda_pos=1.0, lambda_neg=1.0, where=None, ref_where=None):
  """Returns (loss, dloss/dsimilarity) by the formulas of docs/definitions.md."""
  s = np.asarray(similarity, np.float64)
  hard_pos, hard_neg, _, _ = hard_pairs(
      s, labels, ref_labels, margin_pos, margin_neg, where, ref_where)
  grad = np.zeros_like(s)
  loss = 0.0
  if hard_pos:
    loss += lambda_pos * np.mean([margin_pos - s[p] for p in hard_pos])
    for p in hard_pos:
      grad[p] -= lambda_pos / len(hard_pos)
  if hard_neg:
    loss += lambda_neg * np.mean([s[p] - margin_neg for p in hard_neg])
    for p in hard_neg:
      grad[p] += lambda_neg / len(hard_neg)
  return loss, grad


def cosine_backward(x, y, grad_similarity):
  """Gradients w.r.t. x and y of sum(G * cos(x, y)) for a given G."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  nx = np.linalg.norm(x, axis=1, keepdims=True)
  ny = np.linalg.norm(y, axis=1, keepdims=True)
  xn, yn = x / nx, y / ny
  dxn = grad_similarity @ yn
  dyn = grad_similarity.T @ xn
  dx = (dxn - xn * np.sum(dxn * xn, axis=1, keepdims=True)) / nx
  dy = (dyn - yn * np.sum(dyn * yn, axis=1, keepdims=True)) / ny
  return dx, dy


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _ranking_queries(similarity, labels, ref_labels, where, ref_where):
  """Per query with a positive: (row, positive indices, reference indices)."""
  for _, row, positives, refs in _all_queries(similarity, labels, ref_labels,
                                              where, ref_where):
    if positives:
      yield row, positives, refs


def smooth_ap(similarity, labels, ref_labels=None, temperature=0.01,
              where=None, ref_where=None, max_positives=None):
  """1 - mean over queries of the smoothed AP (Brown et al. 2020, eq. 6).

  With `max_positives`, each query averages over its first positives only.
  """
  aps = []
  for row, positives, refs in _ranking_queries(similarity, labels, ref_labels,
                                               where, ref_where):
    ap = 0.0
    kept = positives[:max_positives]
    for i in kept:
      rank_pos = 1 + sum(_sigmoid((row[j] - row[i]) / temperature)
                         for j in positives if j != i)
      rank_all = 1 + sum(_sigmoid((row[j] - row[i]) / temperature)
                         for j in refs if j != i)
      ap += rank_pos / rank_all
    aps.append(ap / len(kept))
  return 1.0 - np.mean(aps) if aps else 0.0


def recall_at_k(similarity, labels, ref_labels=None, ks=(1, 2, 4, 8, 16),
                temperature=0.01, k_temperature=1.0, where=None,
                ref_where=None, max_positives=None):
  """1 - mean over queries and k of the smoothed Recall@k (Patel et al.).

  With `max_positives`, only the first positives are counted as found; the
  normaliser min(k, |P|) still counts them all.
  """
  recalls = []
  for row, positives, refs in _ranking_queries(similarity, labels, ref_labels,
                                               where, ref_where):
    per_k = []
    for k in ks:
      found = 0.0
      for i in positives[:max_positives]:
        rank = 1 + sum(_sigmoid((row[j] - row[i]) / temperature)
                       for j in refs if j != i)
        found += _sigmoid((k - rank) / k_temperature)
      attainable = min(k, len(positives))
      per_k.append(min(found, attainable) / attainable)
    recalls.append(np.mean(per_k))
  return 1.0 - np.mean(recalls) if recalls else 0.0


def numeric_gradient(fn, x, eps=1e-6):
  """Central differences of a scalar function of an array, in float64."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
  return grad


def _pair_lists(similarity, labels, ref_labels, where=None, ref_where=None):
  """Per query: (row, positive indices, negative indices), the rules of docs/definitions.md."""
  for _, row, positives, refs in _all_queries(similarity, labels, ref_labels,
                                              where, ref_where):
    yield row, positives, [j for j in refs if j not in positives]


def _all_queries(similarity, labels, ref_labels, where, ref_where):
  """Per unpadded query: (index, row, positive indices, reference indices)."""
  s = np.asarray(similarity, np.float64)
  q, r = s.shape
  self_pairs = ref_labels is None
  if self_pairs:
    ref_labels, ref_where = labels, where
  where = np.ones(q, bool) if where is None else np.asarray(where)
  ref_where = np.ones(r, bool) if ref_where is None else np.asarray(ref_where)
  for a in range(q):
    if not where[a]:
      continue
    refs = [j for j in range(r) if ref_where[j] and not (self_pairs and j == a)]
    yield a, s[a], [j for j in refs if ref_labels[j] == labels[a]], refs


def contrastive(similarity, labels, ref_labels=None, margin_pos=1.0,
                margin_neg=0.0, where=None, ref_where=None):
  pos, neg = [], []
  for row, positives, negatives in _pair_lists(similarity, labels, ref_labels,
                                               where, ref_where):
    pos += [max(margin_pos - row[j], 0.0) for j in positives]
    neg += [max(row[j] - margin_neg, 0.0) for j in negatives]
  return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def triplet(similarity, labels, ref_labels=None, margin=0.05, mining='all',
            where=None, ref_where=None):
  terms = []
  for row, positives, negatives in _pair_lists(similarity, labels, ref_labels,
                                               where, ref_where):
    if mining == 'batch_hard':
      if positives and negatives:
        terms.append(max(max(row[negatives]) - min(row[positives]) + margin,
                         0.0))
      continue
    for p in positives:
      if mining == 'all':
        terms += [max(row[n] - row[p] + margin, 0.0) for n in negatives]
      else:  # semi-hard: row[p] - margin < row[n] < row[p]
        semi = [row[n] for n in negatives if row[p] - margin < row[n] < row[p]]
        if semi:
          terms.append(max(max(semi) - row[p] + margin, 0.0))
  return np.mean(terms) if terms else 0.0


def multi_similarity(similarity, labels, ref_labels=None, alpha=2.0, beta=50.0,
                     base=0.5, epsilon=0.1, where=None, ref_where=None):
  losses = []
  for row, positives, negatives in _pair_lists(similarity, labels, ref_labels,
                                               where, ref_where):
    if not positives and not negatives:
      continue
    least_pos = min(row[positives]) if positives else np.inf
    most_neg = max(row[negatives]) if negatives else -np.inf
    hard_pos = [j for j in positives if row[j] < most_neg + epsilon]
    hard_neg = [j for j in negatives if row[j] > least_pos - epsilon]
    loss = np.log1p(sum(np.exp(-alpha * (row[j] - base)) for j in hard_pos))
    loss /= alpha
    loss += np.log1p(sum(np.exp(beta * (row[j] - base))
                         for j in hard_neg)) / beta
    losses.append(loss)
  return np.mean(losses) if losses else 0.0


def _normalize_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _softmax_ce(logits, labels):
  out = []
  for row, y in zip(logits, labels):
    shifted = row - row.max()
    out.append(-(shifted[y] - np.log(np.sum(np.exp(shifted)))))
  return np.array(out)


def classification(kind, z, labels, w, where=None, **hp):
  """Normalised softmax, CosFace or ArcFace, straight from the papers."""
  cos = _normalize_rows(z) @ _normalize_rows(w).T
  logits = cos.copy()
  for n, y in enumerate(labels):
    if kind == 'normalized_softmax':
      logits[n] = cos[n] / hp.get('temperature', 0.05)
      continue
    s, m = hp['scale'], hp['margin']
    target = cos[n, y]
    if kind == 'cosface':
      target = target - m
    elif np.cos(np.pi - m) < target:  # arcface, theta + m < pi
      target = np.cos(np.arccos(target) + m)
    else:
      target = target - m * np.sin(m)
    logits[n] = s * cos[n]
    logits[n, y] = s * target
  terms = _softmax_ce(logits, labels)
  where = np.ones(len(labels), bool) if where is None else np.asarray(where)
  return float(np.mean(terms[where]))


def proxy_anchor(z, labels, w, alpha=32.0, margin=0.1, where=None):
  cos = _normalize_rows(z) @ _normalize_rows(w).T
  where = np.ones(len(labels), bool) if where is None else np.asarray(where)
  positive, negative, with_positive = 0.0, 0.0, 0
  for p in range(w.shape[0]):
    pos = [cos[n, p] for n in range(len(labels)) if where[n] and labels[n] == p]
    neg = [cos[n, p] for n in range(len(labels)) if where[n] and labels[n] != p]
    # log(1 + sum exp(x)) in log space: any alpha.
    if pos:
      with_positive += 1
      positive += np.logaddexp.reduce([0.0] + [-alpha * (c - margin)
                                               for c in pos])
    negative += np.logaddexp.reduce([0.0] + [alpha * (c + margin) for c in neg])
  return positive / max(with_positive, 1) + negative / w.shape[0]
