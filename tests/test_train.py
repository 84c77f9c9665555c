"""tcm_jax.train: steps on many devices, optimizer, configs, failures, runs."""

import errno
import functools
import io
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import warnings
from unittest import mock

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax import evaluator as evaluator_lib
from tcm_jax import margins as margins_lib
from tcm_jax import metrics as metrics_lib
from tcm_jax import models
from tcm_jax import optimizer as optimizer_lib
from tcm_jax import parallel
from tcm_jax import report as report_lib
from tcm_jax import train
from tcm_jax import writers
from tcm_jax.data import inputs as inputs_lib
from tcm_jax.data import pipeline
from tcm_jax.losses import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_DEVICES = 8


def _tiny_resnet(**options):
  return models.encoder_config('resnet18', width=0.25, small_images=True,
                               embedding_size=16, **options)


def _float_leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)
          if np.asarray(x).dtype.kind == 'f']


def _leaf_names(tree):
  """The dotted name of each leaf: its tree path's dict keys."""
  return ['.'.join(str(k.key) for k in path
                   if isinstance(k, jax.tree_util.DictKey))
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


# --- One step on 8 devices equals one step on 1 -------------------------------

# Trained BatchNorm (synchronised over the devices) with a ranking loss;
# frozen BatchNorm with a proxy loss (the proxies on their own rate).
STEP_CASES = {
    'resnet_trained_batch_norm': dict(
        model=_tiny_resnet(), loss='smooth_ap', hyper={}),
    'arcface_proxies': dict(
        model=_tiny_resnet(frozen_batch_norm=True), loss='arcface',
        hyper={'scale': 16.0}),
}


def _step_config(model, loss, hyper):
  """SGD with momentum and weight decay, head and proxies on their own rates.

  SGD, not Adam: Adam's first update is about `lr * sign(gradient)`, so a
  gradient entry near zero turns float-level differences in the summation
  order into differences of the size of the step; SGD's update is linear in
  the gradient, so the comparison stays at float precision.
  """
  config = config_lib.default_config()
  config.model = model
  config.loss.name = loss
  config.loss.tcm.enabled = True
  for key, value in hyper.items():
    config.loss.hyper[key] = value
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 4e-4
  config.optimizer.head_lr_multiplier = 3.0
  config.optimizer.proxy_lr_multiplier = 5.0
  return config


def _step_batch(seed=0, classes=4, per_class=4, size=16):
  """16 images; each class's rows are spread over several devices."""
  rng = np.random.default_rng(seed)
  n = classes * per_class
  labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
  return {'image': rng.normal(size=(n, size, size, 3)).astype(np.float32),
          'label': labels[rng.permutation(n)]}


def _one_step(config, batch, devices):
  """The initial state and `(state, metrics)` after one step, on the host."""
  objective = train.create_objective(config)
  graphdef, params, model_state = train.create_model(config, 4, objective)
  schedule = optimizer_lib.learning_rate_schedule(config, steps_per_epoch=10)
  optimizer = optimizer_lib.create_optimizer(config, schedule)
  initial = train.TrainState(jnp.int32(0), params, model_state,
                             optimizer.init(params))
  mesh = parallel.data_mesh(devices)
  step = train.make_train_step(graphdef, objective, optimizer, schedule, mesh)
  state, metrics = step(parallel.replicate(initial, mesh),
                        parallel.shard_batch(batch, mesh))
  return jax.device_get(initial), jax.device_get((state, metrics))


def _assert_trees_close(actual, expected, rtol, scale_tree):
  """Leaf by leaf to `rtol`, with an absolute floor of `rtol * scale`.

  The scale is the largest entry of `scale_tree` (the step, the gradient,
  the statistics): entries near zero carry the rounding of the sums that
  made them, whose size is set by the large ones.
  """
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  scale = max(float(np.max(np.abs(x))) for x in _float_leaves(scale_tree)
              if x.size)
  for name, got, want in zip(_leaf_names(expected), jax.tree.leaves(actual),
                             jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                               err_msg=name)


@pytest.mark.parametrize('case', sorted(STEP_CASES))
def test_step_on_eight_devices_equals_one_device(case):
  config = _step_config(**STEP_CASES[case])
  batch = _step_batch()
  assert len(jax.devices()) == NUM_DEVICES
  initial, (one, metrics_one) = _one_step(config, batch, jax.devices()[:1])
  _, (eight, metrics_eight) = _one_step(config, batch, jax.devices())
  rtol = 1e-5

  assert int(one.step) == int(eight.step) == 1
  assert bool(metrics_one['finite']) and bool(metrics_eight['finite'])
  assert sorted(metrics_one) == sorted(metrics_eight)
  assert {'loss', 'base', 'tcm', 'grad_norm', 'learning_rate'} <= set(
      metrics_one)
  for key in metrics_one:
    np.testing.assert_allclose(metrics_eight[key], metrics_one[key],
                               rtol=rtol, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(metrics_one['loss'],
                             metrics_one['base'] + metrics_one['tcm'],
                             rtol=1e-6)
  assert metrics_one['tcm'] > 0  # TCM is on and has hard pairs to disagree on

  assert metrics_one['learning_rate'] == pytest.approx(
      config.optimizer.learning_rate)

  # The parameters, to `rtol` of the largest step any of them took.
  step_one = jax.tree.map(np.subtract, one.params, initial.params)
  _assert_trees_close(eight.params, one.params, rtol, step_one)
  # The optimizer state (SGD's momentum trace: the global batch's gradient
  # plus weight decay) and the model state (BatchNorm statistics).
  _assert_trees_close(eight.opt_state, one.opt_state, rtol, one.opt_state)
  _assert_trees_close(eight.model_state, one.model_state, rtol,
                      one.model_state)

  # Equality is not trivial: the parameters moved by far more than the
  # tolerance. (Not every leaf: each block's last BatchNorm scale starts at
  # zero, which leaves the convolutions before it no gradient at first.)
  largest_step = max(float(np.max(np.abs(x))) for x in _float_leaves(step_one))
  moved = {name: np.max(np.abs(x)) > 100 * rtol * largest_step
           for name, x in zip(_leaf_names(step_one), jax.tree.leaves(step_one))}
  assert moved['encoder.backbone.conv1.kernel']
  assert moved['encoder.head.proj.kernel']
  assert moved.get('proxies', True)
  assert sum(moved.values()) > len(moved) / 2
  if config.model.get('frozen_batch_norm'):
    # Frozen statistics stay as they were.
    for got, want in zip(jax.tree.leaves(one.model_state),
                         jax.tree.leaves(initial.model_state)):
      np.testing.assert_array_equal(got, want)
  else:
    names = _leaf_names(one.model_state)
    assert any(n.endswith('mean') for n in names)
    for name, got, want in zip(names, jax.tree.leaves(one.model_state),
                               jax.tree.leaves(initial.model_state)):
      assert np.max(np.abs(got - want)) > 1e-3 * np.max(np.abs(want) + 1), name
    _check_stem_batch_norm(initial, batch, (one, eight))


def _check_stem_batch_norm(initial, batch, states):
  """The stem BatchNorm's running statistics against NumPy's of the batch.

  The stem is a 3x3 stride-1 convolution ('SAME', no bias) of the images;
  its per-channel mean and (biased, Flax's) variance over the global batch
  enter the running averages with PyTorch's momentum 0.1. Device 0's own
  two rows would give other statistics, so this tells synchronised
  BatchNorm from per-device BatchNorm.
  """
  kernel = np.asarray(initial.params['encoder']['backbone']['conv1']['kernel'],
                      np.float64)
  images = batch['image'].astype(np.float64)
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, w, _ = images.shape
  conv = np.zeros((n, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      conv += np.einsum('nhwc,co->nhwo', padded[:, dy:dy + h, dx:dx + w],
                        kernel[dy, dx])
  old = initial.model_state['backbone']['bn1']
  expected = {
      'mean': 0.9 * np.asarray(old['mean']) + 0.1 * conv.mean(axis=(0, 1, 2)),
      'var': 0.9 * np.asarray(old['var']) + 0.1 * conv.var(axis=(0, 1, 2))}
  alone = 0.9 * np.asarray(old['mean']) + 0.1 * conv[:2].mean(axis=(0, 1, 2))
  assert not np.allclose(alone, expected['mean'], rtol=1e-3)
  for state in states:
    for key in ('mean', 'var'):
      np.testing.assert_allclose(state.model_state['backbone']['bn1'][key],
                                 expected[key], rtol=1e-4, atol=1e-6)


# --- Optimizer ----------------------------------------------------------------


@functools.cache
def _built(name):
  """`(config, module, params)` of a small model of each kind, with proxies."""
  config = config_lib.default_config()
  config.model = {
      'resnet': _tiny_resnet(),
      'resnet_frozen': _tiny_resnet(frozen_batch_norm=True),
      'vit': models.encoder_config('vit_ti', patch_size=4, image_size=8,
                                   embedding_size=16),
  }[name]
  config.loss.name = 'arcface'  # with class proxies
  graphdef, params, model_state = train.create_model(
      config, 3, train.create_objective(config))
  module = models.merge(graphdef, params['encoder'], model_state)
  return config, module, params


def _module_leaf_paths(module, types):
  """Dotted names of the parameters of every submodule of the given types."""
  names = set()
  for path, node in nnx.iter_graph(module):
    if isinstance(node, types):
      prefix = '.'.join(['encoder', *map(str, path)])
      state = nnx.state(node, nnx.Param)
      names.update(f'{prefix}.{leaf}' for leaf in _leaf_names(state))
  return names


@pytest.mark.parametrize('name', ['resnet', 'resnet_frozen', 'vit'])
def test_weight_decay_mask_is_true_exactly_for_kernels(name):
  _, module, params = _built(name)
  mask = optimizer_lib.weight_decay_mask(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  decayed = {n for n, m in zip(_leaf_names(params), jax.tree.leaves(mask))
             if m}
  # The weights of the convolutions and linear layers, found by module type.
  layers = _module_leaf_paths(module, (nnx.Conv, nnx.Linear))
  assert decayed == {n for n in layers if n.endswith('.kernel')}
  assert decayed
  kept = set(_leaf_names(params)) - decayed
  ends = {n.rsplit('.', 1)[-1] for n in kept}
  assert {'bias', 'scale', 'proxies'} <= ends
  assert ({'pos_embed', 'cls_token'} if name == 'vit' else {'p'}) <= ends


@pytest.mark.parametrize('name', ['resnet', 'vit'])
def test_parameter_groups_put_the_embedding_head_in_head(name):
  _, module, params = _built(name)
  groups = dict(zip(_leaf_names(params),
                    jax.tree.leaves(optimizer_lib.parameter_groups(params))))
  head = {f'encoder.head.{n}' for n in _leaf_names(
      nnx.state(module.head, nnx.Param))}
  assert head and {n for n, g in groups.items() if g == 'head'} == head
  assert [n for n, g in groups.items() if g == 'proxies'] == ['proxies']
  assert {n for n, g in groups.items() if g == 'backbone'} == (
      set(groups) - head - {'proxies'})
  assert any(n.startswith('encoder.backbone.') for n in groups)


def _sgd_step(config, params, grads):
  optimizer = optimizer_lib.create_optimizer(
      config, optimizer_lib.learning_rate_schedule(config, steps_per_epoch=1))
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  return updates


def _random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      rng.normal(size=np.shape(x)).astype(np.float32) for x in leaves])


@pytest.mark.parametrize('multiplier', ['head_lr_multiplier',
                                        'proxy_lr_multiplier'])
def test_learning_rate_multiplier_scales_its_group_only(multiplier):
  config, _, params = _built('resnet')
  config = config.copy_and_resolve_references()
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.learning_rate = 0.1
  config.optimizer.milestones = ()
  grads = _random_like(params, 0)
  plain = _sgd_step(config, params, grads)
  config.optimizer[multiplier] = 10.0
  faster = _sgd_step(config, params, grads)
  group = {'head_lr_multiplier': 'head', 'proxy_lr_multiplier': 'proxies'}[
      multiplier]
  groups = jax.tree.leaves(optimizer_lib.parameter_groups(params))
  assert group in groups
  leaves = zip(groups, jax.tree.leaves(grads), jax.tree.leaves(plain),
               jax.tree.leaves(faster), _leaf_names(params))
  for g, grad, p, f, name in leaves:
    np.testing.assert_allclose(p, -0.1 * grad, rtol=1e-6, err_msg=name)
    if g == group:
      np.testing.assert_allclose(f, 10 * np.asarray(p), rtol=1e-6,
                                 err_msg=name)
    else:
      np.testing.assert_array_equal(f, p, err_msg=name)


def _toy_params():
  rng = np.random.default_rng(4)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {'encoder': {'backbone': {'conv': {'kernel': normal(3, 2),
                                            'bias': normal(2)}},
                      'head': {'gem': {'p': np.float32(3.0)},
                               'proj': {'kernel': normal(2, 2),
                                        'bias': normal(2)}}},
          'proxies': normal(3, 2)}


def _numpy_adam(params, grads_per_step, *, lr, weight_decay, decoupled,
                head_multiplier, b1=0.9, b2=0.999, eps=1e-8):
  """PyTorch's Adam (L2 added to the gradient) or AdamW (decoupled decay).

  Decay on kernels only; the head's learning rate is `head_multiplier`
  times the others', as a PyTorch parameter group with its own `lr`.
  """
  names = _leaf_names(params)
  p = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
  decay = [weight_decay * n.endswith('.kernel') for n in names]
  rate = [lr * (head_multiplier if n.startswith('encoder.head.') else 1.0)
          for n in names]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros_like(x) for x in p]
  for t, grads in enumerate(grads_per_step, start=1):
    for i, g in enumerate(jax.tree.leaves(grads)):
      g = np.asarray(g, np.float64)
      if not decoupled:
        g = g + decay[i] * p[i]
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g ** 2
      update = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
      if decoupled:
        update = update + decay[i] * p[i]
      p[i] = p[i] - rate[i] * update
  return p


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_and_adamw_weight_decay_against_numpy(name):
  params = _toy_params()
  config = config_lib.default_config()
  config.optimizer.name = name
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 0.3
  config.optimizer.head_lr_multiplier = 2.0
  config.optimizer.milestones = ()
  optimizer = optimizer_lib.create_optimizer(
      config, optimizer_lib.learning_rate_schedule(config, steps_per_epoch=1))
  grads_per_step = [_random_like(params, seed) for seed in (10, 11, 12)]
  state, current = optimizer.init(params), params
  for grads in grads_per_step:
    updates, state = optimizer.update(grads, state, current)
    current = jax.tree.map(lambda p, u: p + u, current, updates)
  kwargs = dict(lr=0.01, weight_decay=0.3, head_multiplier=2.0)
  expected = _numpy_adam(params, grads_per_step, decoupled=name == 'adamw',
                         **kwargs)
  for leaf_name, got, want in zip(_leaf_names(params), jax.tree.leaves(current),
                                  expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=leaf_name)
  # The two semantics give different kernels here, so the check tells them
  # apart; leaves without decay are the same under both.
  other = _numpy_adam(params, grads_per_step, decoupled=name != 'adamw',
                      **kwargs)
  for leaf_name, a, b in zip(_leaf_names(params), expected, other):
    assert np.allclose(a, b, rtol=1e-7) != leaf_name.endswith('.kernel'), (
        leaf_name)


def _numpy_schedule(step, *, learning_rate, decay_factor, milestones,
                    steps_per_epoch, warmup_steps):
  passed = sum(step >= round(m * steps_per_epoch) for m in milestones)
  warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
  return learning_rate * decay_factor ** passed * warmup


@pytest.mark.parametrize('warmup_steps', [0, 5])
def test_learning_rate_schedule_against_numpy(warmup_steps):
  config = config_lib.default_config()
  options = dict(learning_rate=0.2, decay_factor=0.3, milestones=(2, 3.5),
                 warmup_steps=warmup_steps)
  for key, value in options.items():
    config.optimizer[key] = value
  steps_per_epoch = 6  # milestones at steps 12 and 21
  schedule = optimizer_lib.learning_rate_schedule(config, steps_per_epoch)
  steps = np.arange(30)
  expected = [_numpy_schedule(s, steps_per_epoch=steps_per_epoch, **options)
              for s in steps]
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected,
                             rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(steps), expected,
                             rtol=1e-6)
  # Three distinct plateaus after the warm-up: the milestones are crossed.
  assert len({round(x, 9) for x in expected[warmup_steps:]}) == 3

  # The optimizer takes its step sizes from the same schedule, step by step.
  config.optimizer.name, config.optimizer.momentum = 'sgd', 0.0
  config.optimizer.weight_decay = 0.0
  optimizer = optimizer_lib.create_optimizer(config, schedule)
  params = {'encoder': {'backbone': {'w': {'bias': np.zeros(1, np.float32)}}}}
  ones = jax.tree.map(np.ones_like, params)
  state = optimizer.init(params)
  taken = []
  for _ in steps:
    updates, state = optimizer.update(ones, state, params)
    taken.append(-float(jax.tree.leaves(updates)[0][0]))
  np.testing.assert_allclose(taken, expected, rtol=1e-6)


def test_learning_rate_schedule_is_fixed_when_made():
  config = config_lib.default_config()
  config.optimizer.milestones = (1,)
  schedule = optimizer_lib.learning_rate_schedule(config, steps_per_epoch=10)
  before = [float(schedule(s)) for s in (0, 10)]
  config.optimizer.learning_rate *= 10  # e.g. the next run of a notebook
  config.optimizer.decay_factor = 0.5
  config.optimizer.milestones = (2,)
  assert [float(schedule(s)) for s in (0, 10)] == before


# --- Config errors, before any compilation ------------------------------------


def _no_compilation(monkeypatch):
  """Makes compiling the step (or any `jax.jit`) an error."""
  def refuse(*args, **kwargs):
    raise AssertionError('compiled before the config error was found')
  monkeypatch.setattr(parallel, 'data_parallel', refuse)
  monkeypatch.setattr(jax, 'jit', refuse)


def _digits_config():
  config = config_lib.default_config()
  config.dataset.name = 'digits'
  config.input.recipe, config.input.image_size = 'small', 8
  config.input.classes_per_batch = 4
  config.model = models.encoder_config('vit_ti', patch_size=4, image_size=8,
                                       embedding_size=16)
  config.train.progress_bar = False
  return config


def _set(config, dotted, value):
  *sections, key = dotted.split('.')
  for section in sections:
    config = config[section]
  config[key] = value


BAD_VALUES = {
    # name: (key, value, words the message must hold)
    'best_metric': ('train.best_metric', 'recall_at_3',
                    ['train.best_metric', "'recall_at_3'", 'recall_at_1',
                     'opis']),
    'recipe': ('input.recipe', 'tiny', ['input.recipe', "'tiny'", 'imagenet',
                                        'small']),
    'optimizer': ('optimizer.name', 'adamm', ['optimizer.name', "'adamm'",
                                              'adamw', 'sgd']),
    'loss_name': ('loss.name', 'smoth_ap', ['loss.name', "'smoth_ap'",
                                            'smooth_ap', 'arcface']),
    'loss_hyper': ('loss.hyper.temprature', 0.01, ['temprature',
                                                   'temperature']),
    'model_option': ('model.patch_size', 16, ['patch_size', 'resnet18',
                                              'gem_p']),
    # ml_collections lets a bool into an int key: a bool is not a count.
    'bool_count': ('eval.bootstrap_resamples', True,
                   ['eval.bootstrap_resamples must be an int >= 0, got True']),
    'negative_steps': ('train.num_steps', -1,
                       ['train.num_steps must be an int >= 0, got -1']),
    'nan_rate': ('optimizer.learning_rate', float('nan'),
                 ['optimizer.learning_rate must be > 0, got nan']),
    'no_prefetch': ('input.prefetch', 0,
                    ['input.prefetch must be an int >= 1, got 0']),
    # Once trained nothing (no positive pair in a batch) and exited 0.
    'one_sample_per_class': ('input.samples_per_class', 1, [
        'input.samples_per_class must be an int >= 2', 'positive pairs',
        'only a proxy loss without TCM', 'got 1.']),
    # Once failed at the first step's trace, or after training.
    'margin_pos': ('loss.tcm.margin_pos', 1.5,
                   ['loss.tcm.margin_pos must be in [-1, 1]', 'got 1.5.']),
    'epsilon': ('eval.epsilon', 1.0,
                ['eval.epsilon must be in (0, 1)', 'got 1.0.']),
    'no_eval_batch': ('input.eval_batch_size', 0,
                      ['input.eval_batch_size must be an int >= 1, got 0.']),
}


def _bad_config(case):
  key, value, _ = BAD_VALUES[case]
  config = _digits_config()
  if case == 'model_option':
    config.model = _tiny_resnet()  # a ViT option on a ResNet
  _set(config, key, value)
  return config


@pytest.mark.parametrize('case', sorted(BAD_VALUES))
def test_bad_value_fails_before_compiling(case, tmp_path, monkeypatch):
  config = _bad_config(case)
  _no_compilation(monkeypatch)
  start = time.perf_counter()
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'),
                             devices=jax.devices()[:1])
  for word in BAD_VALUES[case][2]:
    assert word in str(error.value)
  assert time.perf_counter() - start < 30
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not os.listdir(
      tmp_path / 'run' / 'checkpoints')


def test_eval_batch_size_must_split_over_the_devices():
  config = _digits_config()
  config.input.eval_batch_size = 12
  with pytest.raises(ValueError, match=re.escape(
      'input.eval_batch_size (12) must be a multiple of the number of devices '
      '(8).')):
    inputs_lib.create_inputs(config, num_devices=8)


def test_a_failure_after_the_final_evaluation_leaves_the_metrics(
    tmp_path, monkeypatch):
  # The report is written as soon as the final evaluation is done, and again
  # with the baselines at the end: a failure in between loses nothing.
  def fail(*args, **kwargs):
    raise RuntimeError('the baselines failed')

  monkeypatch.setattr(evaluator_lib, 'baseline_metrics', fail)
  config = _digits_config()
  config.train.num_steps, config.eval.baselines = 2, True
  workdir = tmp_path / 'run'
  with pytest.raises(RuntimeError, match='the baselines failed'):
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  saved = json.loads((workdir / 'metrics.json').read_text())
  assert 0 <= saved['opis'] and 0 < saved['recall_at_k']['1'] <= 1
  assert 'baselines' not in saved
  assert '## Training' in (workdir / 'report.md').read_text()
  assert (workdir / 'checkpoints' / '2').is_dir()


@pytest.mark.parametrize('case', sorted(BAD_VALUES))
def test_check_config_finds_bad_values(case):
  """Before the data is read or anything built: what `check_config` promises."""
  with pytest.raises(ValueError) as error:
    config_lib.check_config(_bad_config(case))
  for word in BAD_VALUES[case][2]:
    assert word in str(error.value)


def test_check_config_lists_the_valid_keys():
  config = _digits_config()
  config.train.num_step = 3
  with pytest.raises(ValueError) as error:
    config_lib.check_config(config)
  valid = sorted(config_lib.default_config().train)
  assert 'train.num_step' in str(error.value)
  assert ', '.join(valid) in str(error.value)


def _run_main(args, workdir, *, log_compiles=False, timeout=120):
  """`python -m tcm_jax.main` on one CPU device: `(result, seconds)`."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  if log_compiles:
    env['JAX_LOG_COMPILES'] = '1'
  start = time.perf_counter()
  run = subprocess.run(
      [sys.executable, '-m', 'tcm_jax.main', f'--workdir={workdir}', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  return run, time.perf_counter() - start


UNKNOWN_KEY_CONFIG = '''
from tcm_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.dataset.name = 'digits'
  config.optimizer.learnig_rate = 0.1
  return config
'''


@pytest.mark.parametrize('where', ['config_file', 'override'])
def test_unknown_key_fails_fast_from_the_command_line(where, tmp_path):
  if where == 'config_file':
    path = tmp_path / 'misspelt.py'
    path.write_text(UNKNOWN_KEY_CONFIG)
    args = [f'--config={path}']
  else:
    args = ['--config=configs/digits.py', '--config.optimizer.learnig_rate=1']
  workdir = tmp_path / 'run'
  run, seconds = _run_main(args, workdir, log_compiles=True)
  assert run.returncode != 0
  if where == 'config_file':
    keys = ', '.join(sorted(config_lib.default_config().optimizer))
    assert (f'Unknown config key optimizer.learnig_rate; the keys of '
            f'optimizer are: {keys}.') in run.stderr
  else:
    # Refused while the flags are parsed: one line, with the valid keys.
    keys = ', '.join(sorted(config_lib.default_config().optimizer))
    assert run.stderr.splitlines()[-1].startswith(
        'error: --config.optimizer.learnig_rate: no config key '
        'optimizer.learnig_rate (did you mean optimizer.learning_rate?); '
        f'optimizer has: {keys}.'), run.stderr
    assert 'Traceback' not in run.stderr
  # JAX_LOG_COMPILES logs every compilation: there was none, and nothing
  # was written.
  assert 'Compiling' not in run.stderr
  assert 'Finished XLA compilation' not in run.stderr
  assert not (workdir / 'checkpoints').exists()
  assert seconds < 60


# --- The workdir, a full disk, a finished run -----------------------------------


@pytest.mark.parametrize('where', ['workdir', 'parent'])
def test_a_workdir_that_is_a_file_is_refused_before_anything_is_built(
    where, tmp_path, monkeypatch):
  path = tmp_path / 'notes.txt'
  path.write_text('kept')
  workdir = path if where == 'workdir' else path / 'run'
  _no_compilation(monkeypatch)
  monkeypatch.setattr(inputs_lib, 'create_inputs', mock.Mock(
      side_effect=AssertionError('the inputs were built')))
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(_digits_config(), str(workdir))
  what = 'is a file' if where == 'workdir' else f'is in {path}, which is a file'
  assert str(error.value) == (
      "workdir must be a folder (the run's checkpoints, logs and report go in "
      f'it); {workdir} {what}.')
  assert path.read_text() == 'kept'


# How TensorStore (under Orbax) reports a full disk: a ValueError.
_DISK_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database: '
    "Failed writing: No space left on device [os_error_code='28']")


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device')


def test_a_staged_file_that_cannot_be_written_names_the_folder(tmp_path):
  folder = tmp_path / 'run'
  folder.mkdir()
  (folder / 'config.json').write_text('old')

  def no_space(f):
    raise OSError(errno.ENOSPC, 'No space left on device')

  with pytest.raises(writers.RunIOError) as caught:
    with writers.staged_files(str(folder)) as staging:
      writers.write_atomic(os.path.join(staging, 'config.json'), no_space)
  # The folder the user gave, not the staging file, which is gone.
  assert str(caught.value) == (
      f"Writing the report failed (No space left on device): '{folder}'")
  assert os.listdir(folder) == ['config.json']
  assert (folder / 'config.json').read_text() == 'old'


def test_metrics_writer_names_the_file_it_cannot_write(tmp_path, monkeypatch):
  writer = writers.MetricsWriter(str(tmp_path), resumed_step=-1)
  writer.write(1, 'train', {'loss': 1.0})
  monkeypatch.setattr(writers, 'open', _no_space, raising=False)
  with pytest.raises(OSError) as error:
    writer.write(2, 'train', {'loss': 0.5})
  writer.close()
  assert error.value.errno == errno.ENOSPC
  assert str(error.value) == ('Writing metrics.jsonl failed (No space left on '
                              f"device): '{tmp_path / 'metrics.jsonl'}'")
  # A resumed run rewrites the file whole or not at all.
  monkeypatch.undo()
  before = (tmp_path / 'metrics.jsonl').read_text()
  monkeypatch.setattr(writers.os, 'replace', _no_space)
  with pytest.raises(OSError, match='Writing metrics.jsonl failed'):
    writers.MetricsWriter(str(tmp_path), resumed_step=0)
  assert (tmp_path / 'metrics.jsonl').read_text() == before
  assert sorted(os.listdir(tmp_path)) == ['metrics.jsonl', 'tensorboard']


def test_a_full_disk_stops_the_run_at_the_save_in_one_line(tmp_path,
                                                           monkeypatch):
  monkeypatch.setattr(checkpoint_lib._Manager, 'save',
                      mock.Mock(side_effect=_DISK_FULL))
  config = _digits_config()
  config.train.num_steps, config.train.checkpoint_every_steps = 4, 2
  config.train.log_every_steps = 1
  workdir = tmp_path / 'run'
  with pytest.raises(OSError) as error:
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  assert error.value.errno == errno.ENOSPC
  assert str(error.value) == (
      'Writing the checkpoint of step 2 failed (No space left on device): '
      f"'{workdir / 'checkpoints'}'")
  # Stopped there: no training past the failed save, no report.
  steps = [json.loads(line)['step']
           for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2]
  assert not (workdir / 'report.md').exists()


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished two-step digits run (and its config)."""
  config = _digits_config()
  config.train.num_steps, config.train.log_every_steps = 2, 1
  config.eval.baselines, config.eval.bootstrap_resamples = False, 0
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return config, workdir


def _outputs(workdir):
  return {name: (workdir / name).read_bytes() for name in
          ('embeddings.npz', 'config.json', 'metrics.json', 'report.md',
           'utility_curves.png', 'metrics.jsonl')}


def _copy_of(finished_run, tmp_path):
  """`(config, workdir, outputs)`: a copy of the finished run to run again."""
  config, finished = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(finished, workdir)
  return config, workdir, _outputs(workdir)


def test_a_finished_run_run_again_says_so_and_is_evaluated_again(
    finished_run, tmp_path, monkeypatch):
  config, workdir, before = _copy_of(finished_run, tmp_path)
  messages = []  # absl's INFO lines, every module's (Orbax's too)
  monkeypatch.setattr(train.logging, 'info', lambda message, *args: (
      messages.append(str(message) % args if args else str(message))))
  final = train.train_and_evaluate(config, str(workdir),
                                   devices=jax.devices()[:1])
  assert (f'The run in {workdir} is already complete (step 2 of 2): '
          'evaluating its last checkpoint on digits/test again.') in messages
  assert not [m for m in messages if m.startswith(('Training', 'Not saving'))]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  # The same evaluation, logged once: its lines replace the first run's.
  assert {'step': 2, 'kind': 'eval', **final} == json.loads(
      before['metrics.jsonl'].splitlines()[-1])
  assert _outputs(workdir)['metrics.jsonl'] == before['metrics.jsonl']
  assert (json.loads(_outputs(workdir)['metrics.json'])
          == json.loads(before['metrics.json']))


def test_a_workdir_of_another_config_is_refused_before_the_inputs(
    finished_run, tmp_path, monkeypatch):
  config, workdir, before = _copy_of(finished_run, tmp_path)
  config = config.copy_and_resolve_references()
  config.model.embedding_size = 8  # another model: its arrays would not fit
  create_inputs = mock.Mock(side_effect=AssertionError('inputs were built'))
  monkeypatch.setattr(inputs_lib, 'create_inputs', create_inputs)
  with pytest.raises(ValueError, match=(
      f'{workdir} holds a run with another config: model.embedding_size ')):
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  create_inputs.assert_not_called()
  assert _outputs(workdir) == before


@pytest.mark.parametrize('failure', ['nan_embeddings', 'evaluation', 'figure'])
def test_good_outputs_survive_a_failing_final_evaluation(
    failure, finished_run, tmp_path, monkeypatch):
  config, workdir, before = _copy_of(finished_run, tmp_path)
  if failure == 'nan_embeddings':  # as from weights restored damaged
    embed = evaluator_lib.Evaluator.embed
    monkeypatch.setattr(evaluator_lib.Evaluator, 'embed', lambda self, *a: (
        np.full_like(embed(self, *a)[0], np.nan), embed(self, *a)[1]))
    message = 'The final embeddings hold'
  elif failure == 'evaluation':
    monkeypatch.setattr(metrics_lib, 'evaluate_embeddings', mock.Mock(
        side_effect=ValueError('no threshold range')))
    message = 'no threshold range'
  else:  # the figure, after metrics.json, of a new evaluation of the run
    config = config.copy_and_resolve_references()
    config.eval.epsilon = 0.2  # (resumable: metrics.json would differ)
    monkeypatch.setattr(report_lib.plots, 'plot_utility_curves', mock.Mock(
        side_effect=OSError(errno.ENOSPC, 'No space left on device')))
    message = 'Writing the report failed'
  with pytest.raises((ValueError, OSError), match=message):
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  # Every final file as it was (config.json too, though the config
  # changed), the embeddings whose evaluation failed set aside (finite
  # ones only) for a look at why.
  assert _outputs(workdir) == before
  failed = workdir / 'embeddings.failed.npz'
  assert failed.exists() == (failure == 'evaluation')
  if failed.exists():
    with np.load(failed) as a, np.load(
        io.BytesIO(before['embeddings.npz'])) as b:
      np.testing.assert_array_equal(a['embeddings'], b['embeddings'])
      np.testing.assert_array_equal(a['labels'], b['labels'])
  assert not [n for n in os.listdir(workdir) if 'tmp' in n]


def test_new_embeddings_whose_report_fails_leave_the_last_set_whole(
    finished_run, tmp_path, monkeypatch):
  """A resumed run's other embeddings: saved only with their report."""
  config, workdir, before = _copy_of(finished_run, tmp_path)
  inputs = inputs_lib.create_inputs(config)
  with np.load(workdir / 'embeddings.npz') as saved:
    embeddings, labels = saved['embeddings'], saved['labels']
  rng = np.random.default_rng(0)
  final = evaluator_lib.final_evaluation(
      config, str(workdir), embeddings + rng.normal(
          scale=0.1, size=embeddings.shape).astype(np.float32), labels,
      tcm_margins=None)
  monkeypatch.setattr(report_lib.plots, 'plot_utility_curves', mock.Mock(
      side_effect=OSError(errno.ENOSPC, 'No space left on device')))
  with pytest.raises(writers.RunIOError, match=(
      r"^Writing the report failed \(No space left on device\): '.*run'$")):
    evaluator_lib.write_final_report(config, str(workdir), inputs,
                                     inputs.test, 2, final)
  assert _outputs(workdir) == before
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(finished_run[1]))
  monkeypatch.undo()  # and with the figure, the new set lands whole
  evaluator_lib.write_final_report(config, str(workdir), inputs, inputs.test,
                                   2, final)
  with np.load(workdir / 'embeddings.npz') as saved:
    np.testing.assert_array_equal(saved['embeddings'], final.embeddings[0])
  assert report_lib.load_results(str(workdir))[0] == pytest.approx(
      final.metrics)


# --- Non-finite loss ----------------------------------------------------------


def _synthetic_config(**train_options):
  """Synthetic 40 px images, 8 classes (4 to train) x 4, batches of 4 x 2."""
  config = config_lib.default_config()
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.num_classes = 8
  config.dataset.synthetic.images_per_class = 4
  config.dataset.synthetic.image_size = 40
  config.input.image_size = 32
  config.input.resize_size = 36
  config.input.classes_per_batch = 4
  config.input.samples_per_class = 2
  config.input.eval_batch_size = 8
  config.input.num_threads = 2
  config.eval.ks = (1,)
  config.eval.baselines = False  # tested in test_train_glyphs.py
  config.train.progress_bar = False
  for key, value in train_options.items():
    config.train[key] = value
  return config


@pytest.mark.parametrize('bad_step', [4, 5])
def test_non_finite_loss_stops_the_run(bad_step, tmp_path, monkeypatch):
  """NaN images from step `bad_step` on; checkpoints every 2 steps.

  Step 4 is a checkpoint step (the check comes before the save); step 5 is
  not (its metrics are checked once step 6 is dispatched).
  """
  class NaNBatches(pipeline.TrainBatches):

    def __next__(self):
      step = self.get_state()['step'] + 1  # the trainer's 1-based step
      batch = super().__next__()
      if step >= bad_step:
        batch = {**batch, 'image': np.full_like(batch['image'], np.nan)}
      return batch

  monkeypatch.setattr(pipeline, 'TrainBatches', NaNBatches)
  config = _synthetic_config(num_steps=10, checkpoint_every_steps=2,
                             log_every_steps=3, eval_every_steps=0)
  config.model = _tiny_resnet(frozen_batch_norm=True)
  workdir = tmp_path / 'run'
  with pytest.raises(train.NonFiniteLossError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert f'Non-finite loss at step {bad_step}:' in message
  for part in ('loss=nan', 'base=nan', 'tcm=nan', 'grad_norm=nan'):
    assert part in message
  good = [s for s in range(1, bad_step) if s % 2 == 0]
  assert f'(step {good[-1]})' in message

  checkpoints = workdir / 'checkpoints'
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps == good
  for step in steps:
    state = ocp.StandardCheckpointer().restore(checkpoints / str(step) /
                                               'state')
    assert int(state['step']) == step
    for leaf in jax.tree.leaves(state):
      assert np.all(np.isfinite(np.asarray(leaf)))
  assert not (workdir / 'report.md').exists()
  lines = [json.loads(line) for line in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [line['step'] for line in lines] == [3]
  assert all(np.isfinite(v) for line in lines for k, v in line.items()
             if k != 'kind')


# --- Every config builds and runs ---------------------------------------------

CONFIG_FILES = sorted(p.stem for p in (REPO / 'configs').glob('*.py'))
# (Full-size ViT-B runs forward against timm in tests/models/test_pretrained.py.)
FULL_SIZE = {('cub200', 'resnet50')}


def _config_arguments(name):
  """The arguments a config file takes (its `ARGUMENTS`), or [None]."""
  module = config_lib.load_module(str(REPO / 'configs' / f'{name}.py'),
                                  f'_arguments_{name}')
  return list(getattr(module, 'ARGUMENTS', [None]))


def _config_cases():
  """`(file, argument)` of every config: each argument a file can take."""
  return [(name, argument) for name in CONFIG_FILES
          for argument in _config_arguments(name)]


CONFIG_CASES = _config_cases()


def _case_id(case):
  name, backbone = case
  return f'{name}:{backbone}' if backbone else name


def _load_config(name, backbone):
  """As `main` does: `--config=configs/<name>.py[:<backbone>]`, locked."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                  lock_config=True)
  path = REPO / 'configs' / f'{name}.py'
  with warnings.catch_warnings():
    # ml_collections loads the file with the deprecated `load_module()`.
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    flag_values(['test', f'--config={path}' + (f':{backbone}' if backbone
                                                else '')])
  return flag_values.config


def test_every_config_file_is_covered():
  for name in CONFIG_FILES:  # a file taking an argument lists them
    text = (REPO / 'configs' / f'{name}.py').read_text()
    takes = re.search(r'def get_config\(\s*\w', text) is not None
    assert takes == (_config_arguments(name) != [None]), name
  assert {'digits', 'digits_toy', 'cub200', 'cars196', 'sop', 'inat2018',
          'synthetic'} <= set(CONFIG_FILES)
  assert len(CONFIG_CASES) == sum(len(_config_arguments(name))
                                  for name in CONFIG_FILES)
  assert ('digits_toy', 'tcm') in CONFIG_CASES
  assert TRAINED_ELSEWHERE <= set(CONFIG_CASES)


@pytest.mark.parametrize('name,backbone', CONFIG_CASES,
                         ids=[_case_id(c) for c in CONFIG_CASES])
def test_config_passes_check_config(name, backbone):
  config = _load_config(name, backbone)
  config_lib.check_config(config)
  train.create_objective(config)
  assert config.model.name in models.MODELS


# The paper's recipe (Zhang et al., ICLR 2024, after Patel et al., CVPR 2022): batch, epochs, milestones,
# optimizer and learning rate per dataset and backbone.
PROTOCOL = {
    'inat2018': dict(batch=4000, resnet50=(90, (40, 70), 'adam', 1e-4),
                     vit_b16=(90, (10, 40, 70), 'adamw', 5e-5)),
    'sop': dict(batch=4000, resnet50=(55, (25, 50), 'adam', 2e-4),
                vit_b16=(55, (25, 50), 'adamw', 5e-5)),
    'cars196': dict(batch=392, resnet50=(170, (80, 140), 'adam', 1e-4),
                    vit_b16=(50, (20, 30, 40), 'adamw', 1e-5)),
    'cub200': dict(batch=400, resnet50=(40, (10, 20, 30), 'adam', 1e-4),
                   vit_b16=(40, (10, 20, 30), 'adamw', 1e-5)),
}


@pytest.mark.parametrize('name,backbone', [
    (name, backbone) for name in sorted(PROTOCOL)
    for backbone in ('resnet50', 'vit_b16')])
def test_config_carries_the_protocol(name, backbone):
  config = _load_config(name, backbone)
  epochs, milestones, optimizer, learning_rate = PROTOCOL[name][backbone]
  assert config.dataset.name == name
  assert config.input.samples_per_class == 4
  assert (config.input.classes_per_batch * 4 == PROTOCOL[name]['batch'])
  assert config.train.num_epochs == epochs
  assert config.train.num_steps == 0  # epochs decide the length
  assert tuple(config.optimizer.milestones) == milestones
  assert config.optimizer.name == optimizer
  assert config.optimizer.learning_rate == pytest.approx(learning_rate,
                                                         rel=1e-12)
  assert config.optimizer.weight_decay == pytest.approx(4e-4)
  assert config.optimizer.decay_factor == pytest.approx(0.3)
  assert (config.input.recipe, config.input.image_size,
          config.input.resize_size) == ('imagenet', 224, 256)
  # Smooth-AP (sigmoid temperature 0.01) + TCM (m+ 0.9, m- 0.5, lambda 1).
  assert config.loss.name == 'smooth_ap'
  hyper = {**registry.LOSSES['smooth_ap'].hyperparameters(),
           **config.loss.hyper.to_dict()}
  assert hyper['temperature'] == pytest.approx(0.01)
  assert config.loss.tcm.to_dict() == dict(
      enabled=True, margin_pos=0.9, margin_neg=0.5, lambda_pos=1.0,
      lambda_neg=1.0)
  assert config.model.embedding_size == 512
  if backbone == 'resnet50':
    assert config.model.name == 'resnet50'
    assert config.model.frozen_batch_norm is True
    assert config.model.gem_p == 3.0
  else:
    assert (config.model.name, config.model.patch_size,
            config.model.image_size) == ('vit_b', 16, 224)


def test_digits_config_is_the_closed_set_digits():
  config = _load_config('digits', None)
  assert config.dataset.name == 'digits_closed'
  inputs = inputs_lib.create_inputs(config)
  assert inputs.classes.tolist() == list(range(10))
  assert sorted(np.unique(inputs.test.labels).tolist()) == list(range(10))
  # A batch holds every digit; the test images are never evaluated before
  # the end.
  assert config.input.classes_per_batch == 10
  assert config.train.eval_every_steps == 0
  assert inputs.val is None


def _shrink(config, full_size):
  """Tiny inputs and two steps; a small model of the same family unless full.

  Only one ResNet-50 config runs at full size (slow); in the others a
  ResNet-18 at width 0.25 (frozen BatchNorm, as the recipe) or a ViT-Ti
  stands in, which builds and compiles in seconds: what those runs
  check is the config's own choices (optimizer, schedule, dtype, inputs).
  The digits config's model is small already and stays.
  """
  config.dataset.name = 'synthetic'
  synthetic = config.dataset.synthetic
  synthetic.num_classes, synthetic.images_per_class = 8, 4
  synthetic.image_size = 40
  config.input.image_size, config.input.resize_size = 32, 36
  config.input.classes_per_batch, config.input.samples_per_class = 4, 2
  config.input.eval_batch_size = 8
  config.train.num_steps = 2
  config.train.eval_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.train.progress_bar = False
  config.eval.ks = (1,)
  config.eval.baselines = False  # tested in test_train_glyphs.py
  dtype = config.model.dtype
  if config.model.name == 'vit_b':
    if not full_size:
      config.model = models.encoder_config('vit_ti', embedding_size=16,
                                           dtype=dtype)
    config.model.image_size, config.model.patch_size = 32, 16
  elif config.model.name == 'resnet50' and not full_size:
    config.model = models.encoder_config(
        'resnet18', width=0.25, embedding_size=16, frozen_batch_norm=True,
        dtype=dtype)
  return config


# The paper's configs of the other datasets are CUB-200's recipe with other
# numbers (checked against PROTOCOL above): training CUB-200's trains theirs.
RECIPE_NUMBERS = {'dataset.name', 'input.classes_per_batch',
                  'optimizer.learning_rate', 'optimizer.milestones',
                  'train.num_epochs', 'train.log_every_steps'}
# Trained elsewhere on their own data, at their own model: configs/digits.py
# end to end (test_digits_default_run_end_to_end), both digits_toy variants by
# their notebook (tests/test_colabs.py).
TRAINED_ELSEWHERE = {('digits', None), ('digits_toy', 'base'),
                     ('digits_toy', 'tcm')}
TRAINED_CASES = [case for case in CONFIG_CASES
                 if case[0] not in set(PROTOCOL) - {'cub200'}
                 and case not in TRAINED_ELSEWHERE]


@pytest.mark.parametrize('name,backbone', [
    (name, backbone) for name in sorted(set(PROTOCOL) - {'cub200'})
    for backbone in ('resnet50', 'vit_b16')])
def test_other_paper_configs_differ_from_cub200_in_recipe_numbers_only(
    name, backbone):
  differ = set(config_lib.changed_keys(
      _load_config('cub200', backbone).to_dict(),
      _load_config(name, backbone).to_dict()))
  assert 'dataset.name' in differ and differ <= RECIPE_NUMBERS, differ


@pytest.mark.parametrize('name,backbone', [
    pytest.param(*case, id=_case_id(case),
                 marks=[pytest.mark.slow] if case in FULL_SIZE else [])
    for case in TRAINED_CASES])
def test_config_trains_two_steps(name, backbone, tmp_path):
  full_size = (name, backbone) in FULL_SIZE
  original = _load_config(name, backbone)
  config = _shrink(_load_config(name, backbone), full_size)
  if full_size:
    assert config.model.name == original.model.name
  assert config.optimizer.to_dict() == original.optimizer.to_dict()
  workdir = tmp_path / 'run'
  try:
    final = train.train_and_evaluate(config, str(workdir),
                                     devices=jax.devices()[:1])
    assert {'recall_at_1', 'map_at_r', 'opis', 'eps_opis'} <= set(final)
    assert all(math.isfinite(v) for v in final.values())
    assert (workdir / 'report.md').exists()
    lines = [json.loads(line) for line in
             (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert {(line['step'], line['kind']) for line in lines} == {
        (2, 'train'), (2, 'eval')}
    with checkpoint_lib.Checkpointer(str(workdir / 'checkpoints')) as saved:
      assert saved.all_steps() == [2]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)  # ViT-B's is a gigabyte


# --- The default run, end to end ----------------------------------------------


@pytest.mark.slow
def test_digits_default_run_end_to_end(tmp_path):
  workdir = tmp_path / 'digits'
  run, _ = _run_main(['--config=configs/digits.py'], workdir, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  header = re.search(r'^\| metric \| (.*) \|$', run.stdout, re.M)
  assert header, run.stdout
  columns = header.group(1).split(' | ')
  assert columns == ['model', 'pixels', 'pca64']
  # The table names the metrics as the report does (`metric_label`), or by
  # their keys.
  config = _load_config('digits', None)
  key_of = {}
  for key in config_lib.metric_names(config):
    for label in (key, report_lib.metric_label(key),
                  report_lib.metric_label(key, config.eval.epsilon)):
      key_of[label] = key
  rows = {key_of.get(name, name): dict(zip(columns, map(float,
                                                        values.split(' | '))))
          for name, values in re.findall(r'^\| ([^|]+?) \| ([0-9. |]+) \|$',
                                         run.stdout, re.M)}
  assert {'recall_at_1', 'opis', 'eps_opis', 'map_at_r'} <= set(rows)
  table = {name: row['model'] for name, row in rows.items()}
  for name in ('report.md', 'utility_curves.png', 'metrics.jsonl',
               'metrics.json'):
    assert (workdir / name).stat().st_size > 0, name
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  recall_at_1 = float(table['recall_at_1'])
  # The main job beats its raw-input baselines on retrieval.
  for metric in ('recall_at_1', 'map_at_r'):
    assert rows[metric]['model'] > rows[metric]['pixels'], rows[metric]
    assert rows[metric]['model'] > rows[metric]['pca64'], rows[metric]
  # The printed baselines are those of metrics.json and of the report.
  _, baselines = report_lib.load_results(str(workdir))
  assert baselines['pixels']['map_at_r'] == pytest.approx(
      rows['map_at_r']['pixels'], abs=1e-4)
  assert '## Against raw-input baselines' in (workdir / 'report.md').read_text()

  num_steps = math.ceil(config.train.num_epochs
                        * inputs_lib.create_inputs(config).steps_per_epoch)
  lines = [json.loads(line) for line in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  final = [line for line in lines if line['kind'] == 'eval'][-1]
  assert final['step'] == num_steps
  assert final['recall_at_1'] == pytest.approx(recall_at_1, abs=1e-4)
  assert float(table['opis']) == pytest.approx(final['opis'], abs=1e-4)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps[-1] == num_steps

  # The saved test embeddings reproduce the final metrics on their own.
  with np.load(workdir / 'embeddings.npz') as saved:
    embeddings, labels = saved['embeddings'], saved['labels']
  assert embeddings.shape == (len(labels), config.model.embedding_size)
  assert set(np.unique(labels)) == set(range(10))  # closed-set: every digit
  again = metrics_lib.evaluate_embeddings(embeddings, labels)
  assert again.retrieval.recall_at_k[1] == pytest.approx(recall_at_1, abs=1e-4)
  assert again.opis == pytest.approx(final['opis'], abs=1e-4)
  # And the verification operating points of the report (eval.fars).
  written = json.loads((workdir / 'metrics.json').read_text())
  points = metrics_lib.operating_points(embeddings, labels,
                                        fars=config.eval.fars)
  assert written['operating_points']['eer'] == pytest.approx(points.eer,
                                                             abs=1e-9)
  assert 'eer' in written['bootstrap']['intervals']
  assert (workdir / 'det_curve.png').stat().st_size > 0


# --- load_config: config files for notebooks and scripts ------------------------


def test_load_config_reads_the_file_with_its_argument(monkeypatch):
  monkeypatch.chdir(REPO)
  config = config_lib.load_config('configs/digits_toy.py:base')
  assert not config.loss.tcm.enabled and config.model.embedding_size == 2
  assert config_lib.load_config('configs/digits_toy.py').loss.tcm.enabled
  assert config.to_dict() == _load_config('digits_toy', 'base').to_dict()
  assert not config.is_locked  # notebooks add keys before training


@pytest.mark.parametrize('spec, error, message', [
    ('configs/missing.py', FileNotFoundError, "'configs/missing.py' not found"),
    ('setup.cfg', ValueError, r'path/to/file.py\[:argument\]'),
    ('tcm_jax/__init__.py', ValueError, 'defines no get_config'),
    ('configs/digits_toy.py:wrong', ValueError,
     r"takes one of \['tcm', 'base'\], got 'wrong'"),
    ('configs/cub200.py:resnet', ValueError,
     r"takes one of \['resnet50', 'vit_b16'\], got 'resnet'"),
    ('configs/digits.py:tcm', ValueError, "takes no argument, got 'tcm'"),
])
def test_load_config_errors_name_the_problem(monkeypatch, spec, error, message):
  monkeypatch.chdir(REPO)
  with pytest.raises(error, match=message):
    config_lib.load_config(spec)


def test_load_config_path_may_hold_colons(tmp_path):
  folder = tmp_path / 'a:b'
  folder.mkdir()
  (folder / 'c.py').write_text(
      (REPO / 'configs' / 'digits_toy.py').read_text())
  config = config_lib.load_config(f'{folder}/c.py:base')
  assert not config.loss.tcm.enabled
  with pytest.raises(ValueError, match='needs an argument'):
    (folder / 'd.py').write_text(
        'from tcm_jax import config as config_lib\n'
        'def get_config(x):\n  return config_lib.default_config()\n')
    config_lib.load_config(f'{folder}/d.py')


def test_a_run_saved_before_a_config_key_existed_is_the_same_run():
  current = checkpoint_lib.json_safe(config_lib.default_config().to_dict())
  saved = json.loads(json.dumps(current))
  del saved['eval']['final_split'], saved['dataset']['glyphs']
  saved['model'] = {'name': 'vit_ti'}  # its options at the encoder's defaults
  merged = config_lib.with_default_keys(saved)
  assert merged['eval']['final_split'] == 'test'
  assert merged['model'] == config_lib.model_config('vit_ti').to_dict()
  current['model'] = config_lib.model_config('vit_ti').to_dict()
  assert config_lib.changed_keys(merged, current) == []
  current['dataset']['glyphs']['fonts'] = 'dejavu'
  assert config_lib.changed_keys(merged, current) == ['dataset.glyphs.fonts']


# --- Names that moved out of tcm_jax.train --------------------------------------

MOVED = {
    'default_config': config_lib, 'recipe_config': config_lib,
    'load_config': config_lib, 'check_config': config_lib,
    'with_default_keys': config_lib, 'BACKBONES': config_lib,
    'create_inputs': inputs_lib, 'Inputs': inputs_lib,
    'loader_options': inputs_lib, 'parameter_groups': optimizer_lib,
    'weight_decay_mask': optimizer_lib, 'learning_rate_schedule': optimizer_lib,
    'create_optimizer': optimizer_lib, 'results_table': report_lib,
    'load_results': report_lib, 'load_results_dict': report_lib,
    'embed_split': evaluator_lib, 'make_embed_fn': evaluator_lib,
    'margins_from_embeddings': margins_lib,
    'hard_pair_fractions': margins_lib, 'logged_margins': writers,
}


@pytest.mark.parametrize('name', sorted(MOVED))
def test_old_names_still_work_with_a_warning(name):
  module = MOVED[name]
  with pytest.warns(DeprecationWarning,
                    match=rf'tcm_jax\.train\.{name} has moved to '
                    rf'{module.__name__}\.{name};'):
    assert getattr(train, name) is getattr(module, name)


def test_other_names_are_not_there():
  with pytest.raises(AttributeError, match="has no attribute 'uses_proxies'"):
    train.uses_proxies  # pylint: disable=pointless-statement
