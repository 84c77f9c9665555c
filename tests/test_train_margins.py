"""tcm_jax.train: starting from a run, TCM margins from the data, bootstrap.

The runs are tiny (digits at 16 px, a ResNet-18 at width 0.25 whose
BatchNorm statistics are trained, six steps on one device) and shared by
the tests through module-scoped fixtures: one uninterrupted run, and the
same config interrupted after step 3 and resumed. They share their compiled
programs through a persistent compilation cache of this module's own, so
that only the first run compiles.
"""

import functools
import json
import logging
import os
import pathlib
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax import margins as margins_lib
from tcm_jax import metrics as metrics_lib
from tcm_jax import models
from tcm_jax import parallel
from tcm_jax import train
from tcm_jax import writers
from tcm_jax.data import datasets
from tcm_jax.data import inputs as inputs_lib

NUM_STEPS = 6
EVERY_STEPS = 2        # margins re-estimated after steps 2 and 4, not 6
ESTIMATED_AT = [0, 2, 4]  # before the first step, then every 2 but the last
CHECKPOINT_EVERY = 2   # checkpoints at steps 2, 4 and 6
STOP_AFTER = 3         # the interrupted run stops here; it resumes from 2
MAX_SAMPLES = 64
HARD_POS_FRACTION = 0.99  # nearly every positive pair hard: warned about
NUM_CLASSES = 5        # digits' training classes, 0-4 (5-9 are the test's)


# --- Shared set-up ------------------------------------------------------------


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this module's runs only.

  Every run builds its step, embedding and evaluation functions anew, and
  JAX's in-memory caches key on the function objects: without this each run
  compiles them again (most of a tiny run's time). JAX decides once per
  process whether it uses the cache; `reset_cache` (private, hence the
  fallback: the tests are only slower without it) makes it look again, here
  and when the module's settings are undone.
  """
  try:
    # pylint: disable-next=g-import-not-at-top,import-outside-toplevel
    from jax._src import compilation_cache
    reset = compilation_cache.reset_cache
  except (ImportError, AttributeError):
    yield
    return
  settings = {'jax_compilation_cache_dir': str(tmp_path_factory.mktemp('xla')),
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_persistent_cache_min_entry_size_bytes': -1}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  reset()
  try:
    yield
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    reset()


def _resnet(**options):
  return models.encoder_config(
      'resnet18', width=0.25, small_images=True,
      **{'embedding_size': 8, **options})


def _run_config():
  """Digits at 16 px (at 8 px this ResNet maps many images to one point),
  contrastive + TCM with margins from the data."""
  config = config_lib.default_config()
  config.dataset.name = 'digits'
  config.input.recipe, config.input.image_size = 'small', 16
  config.input.classes_per_batch, config.input.samples_per_class = 4, 4
  config.input.eval_batch_size = 128
  config.input.num_threads = 2
  config.model = _resnet()  # trained BatchNorm: model_state changes
  config.loss.name = 'contrastive'
  from_data = config.loss.tcm_from_data
  from_data.enabled, from_data.every_steps = True, EVERY_STEPS
  from_data.max_samples = MAX_SAMPLES
  from_data.hard_pos_fraction = HARD_POS_FRACTION
  config.train.num_steps = NUM_STEPS
  config.train.checkpoint_every_steps = CHECKPOINT_EVERY
  config.train.log_every_steps = 1
  config.train.progress_bar = False
  config.eval.baselines = False
  config.eval.bootstrap_resamples = 200
  return config


class _Stop(Exception):
  """Raised by a callback: the run is interrupted there."""


class _Warnings(logging.Handler):
  """The absl warnings logged while attached."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


class _Recorded:
  """What a run did, seen from outside: filled in by `_train`."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self.step_margins = []   # per step call: the margins passed, as floats
    self.estimates = []      # per margin estimate: the labels it saw
    self.warnings = []
    self.final_state = None  # the state after the last step, on the host
    self.final = None        # what train_and_evaluate returned


def _train(config, recorded, *, stop_after=None):
  """`train_and_evaluate`, recording the margins each step is given.

  The step function is wrapped where `create_training` builds it, and
  `margins.margins_from_embeddings` where the run estimates the margins.
  """
  make_train_step = train.make_train_step
  margins_from_embeddings = margins_lib.margins_from_embeddings

  def make(*args, **kwargs):
    step = make_train_step(*args, **kwargs)

    def recorded_step(state, batch, tcm_margins=None):
      recorded.step_margins.append(
          None if tcm_margins is None else tuple(map(float, tcm_margins)))
      return step(state, batch, tcm_margins)
    return recorded_step

  def estimate(embeddings, labels, **kwargs):
    recorded.estimates.append(np.asarray(labels))
    return margins_from_embeddings(embeddings, labels, **kwargs)

  def callback(step, state):
    if step == config.train.num_steps:
      recorded.final_state = jax.device_get(state)
    if step == stop_after:
      raise _Stop(step)

  handler = _Warnings()
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  try:
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(train, 'make_train_step', make)
      patch.setattr(margins_lib, 'margins_from_embeddings', estimate)
      return train.train_and_evaluate(config, str(recorded.workdir),
                                      devices=jax.devices()[:1],
                                      callbacks=[callback])
  finally:
    absl_logger.removeHandler(handler)
    recorded.warnings += handler.messages


@pytest.fixture(scope='module')
def full(tmp_path_factory):
  """The uninterrupted run."""
  recorded = _Recorded(tmp_path_factory.mktemp('full') / 'run')
  recorded.final = _train(_run_config(), recorded)
  return recorded


@pytest.fixture(scope='module')
def resumed(tmp_path_factory, full):  # pylint: disable=unused-argument
  """The same config, stopped after step 3 and resumed (from step 2)."""
  recorded = _Recorded(tmp_path_factory.mktemp('resumed') / 'run')
  with pytest.raises(_Stop):
    _train(_run_config(), recorded, stop_after=STOP_AFTER)
  recorded.first_part_calls = len(recorded.step_margins)
  recorded.first_part_estimates = len(recorded.estimates)
  recorded.first_part_lines = _lines(recorded.workdir)
  recorded.final = _train(_run_config(), recorded)
  return recorded


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _metrics_json(workdir):
  with open(os.path.join(workdir, 'metrics.json')) as f:
    return json.load(f)


# --- Trees --------------------------------------------------------------------


def _plain(tree):
  """Nested dicts with string keys and NumPy leaves, nnx's boxes taken off.

  The same spelling for Orbax's, nnx's and the loader's trees.
  """
  if isinstance(tree, nnx.State):
    tree = nnx.to_pure_dict(tree)
  if isinstance(tree, dict):
    if set(tree) == {'value'} and not isinstance(tree['value'], dict):
      return np.asarray(tree['value'])
    return {str(key): _plain(value) for key, value in tree.items()}
  if hasattr(tree, 'value') and not hasattr(tree, '__array__'):
    return np.asarray(tree.value)
  return np.asarray(tree)


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flat(value, f'{prefix}{key}/'))
    return flat
  return {prefix[:-1]: tree}


def _assert_same(actual, expected, what):
  actual, expected = _flat(_plain(actual)), _flat(_plain(expected))
  assert sorted(actual) == sorted(expected), what
  assert expected, what
  for name, want in expected.items():
    assert actual[name].shape == want.shape, f'{what}: {name}'
    assert actual[name].dtype == want.dtype, f'{what}: {name}'
    np.testing.assert_array_equal(actual[name], want, err_msg=f'{what}: {name}')


def _differs(a, b):
  a, b = _flat(_plain(a)), _flat(_plain(b))
  assert sorted(a) == sorted(b)
  return any(not np.array_equal(a[k], b[k]) for k in a)


def _orbax_state(step_dir):
  """A checkpoint's train state, read with Orbax alone."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(step_dir, 'state'))


# --- 1. Starting from a tcm_jax run -------------------------------------------


def _from_run(pretrained, *, head=False, seed=1, **model_options):
  """Run B's model: arcface (class proxies) starting from `pretrained`."""
  config = _run_config()
  config.loss.name = 'arcface'
  config.loss.hyper.scale = 16.0
  config.loss.tcm_from_data.enabled = False
  config.seed = seed
  config.model = _resnet(**model_options)
  config.pretrained = str(pretrained)
  config.pretrained_head = head
  objective = train.create_objective(config)
  assert objective.uses_proxies
  return train.create_model(config, NUM_CLASSES, objective)


@functools.cache
def _fresh(seed=1, **model_options):
  """Run B's model without `pretrained`: its own initialisation."""
  config = _run_config()
  config.loss.name = 'arcface'  # class proxies, as run B's
  config.loss.hyper.scale = 16.0
  config.seed = seed
  config.model = _resnet(**model_options)
  return train.create_model(config, NUM_CLASSES,
                            train.create_objective(config))


def test_a_run_starts_from_another_runs_backbone(full):
  final_dir = full.workdir / 'checkpoints' / str(NUM_STEPS)
  saved = _plain(_orbax_state(final_dir))
  assert int(saved['step']) == NUM_STEPS
  kept = full.final_state
  _, params, model_state = _from_run(full.workdir)
  _, fresh_params, fresh_state = _fresh()

  # The backbone and its BatchNorm statistics are A's, exactly: as the
  # loader reads them, as Orbax reads them, as the run held them.
  weights = checkpoint_lib.load_run_weights(str(full.workdir))
  assert weights.step == NUM_STEPS  # the only step with metrics (the last)
  assert sorted(weights.params) == ['backbone']
  backbone = params['encoder']['backbone']
  _assert_same(backbone, weights.params['backbone'], 'loader')
  _assert_same(backbone, saved['params']['encoder']['backbone'], 'orbax')
  _assert_same(backbone, kept.params['encoder']['backbone'], 'callback')
  _assert_same(model_state['backbone'], weights.model_state['backbone'],
               'loader statistics')
  _assert_same(model_state['backbone'], saved['model_state']['backbone'],
               'orbax statistics')
  _assert_same(model_state, kept.model_state, 'callback statistics')
  # Not trivially: A's training moved them from where B's seed starts.
  assert _differs(backbone, fresh_params['encoder']['backbone'])
  means = [v for k, v in _flat(_plain(model_state)).items()
           if k.endswith('mean')]
  assert means and any(np.max(np.abs(m)) > 1e-3 for m in means)
  assert _differs(model_state, fresh_state)

  # The head is B's own initialisation, not A's; the proxies are B's.
  _assert_same(params['encoder']['head'], fresh_params['encoder']['head'],
               'fresh head')
  assert _differs(params['encoder']['head'], saved['params']['encoder']['head'])
  assert params['proxies'].shape == (NUM_CLASSES, 8)
  np.testing.assert_array_equal(params['proxies'], fresh_params['proxies'])
  assert 'proxies' not in saved['params']  # contrastive: A had none


def test_pretrained_head_loads_the_head_too(full):
  saved = _plain(_orbax_state(full.workdir / 'checkpoints' / str(NUM_STEPS)))
  _, params, model_state = _from_run(full.workdir, head=True)
  _assert_same(params['encoder'], saved['params']['encoder'], 'encoder')
  _assert_same(params['encoder'], full.final_state.params['encoder'],
               'callback encoder')
  _assert_same(model_state, saved['model_state'], 'statistics')
  _, fresh_params, _ = _fresh()
  np.testing.assert_array_equal(params['proxies'], fresh_params['proxies'])


@pytest.mark.parametrize('where', ['checkpoints', 'step'])
def test_pretrained_may_name_the_checkpoints_or_one_step(full, where):
  checkpoints = full.workdir / 'checkpoints'
  steps = sorted(int(p.name) for p in checkpoints.iterdir()
                 if p.name.isdigit())
  assert steps == [2, 4, 6]
  # A step directory: that step, not the best or the latest.
  step = NUM_STEPS if where == 'checkpoints' else 2
  path = checkpoints if where == 'checkpoints' else checkpoints / '2'
  saved = _plain(_orbax_state(checkpoints / str(step)))
  _, params, model_state = _from_run(path, head=True)
  _assert_same(params['encoder'], saved['params']['encoder'], where)
  _assert_same(model_state, saved['model_state'], where)
  latest = _plain(_orbax_state(checkpoints / str(NUM_STEPS)))
  assert (where == 'step') == _differs(params['encoder'],
                                       latest['params']['encoder'])


@pytest.mark.parametrize('model, head, words', [
    (dict(in_channels=1), False, ['backbone', "('conv1/kernel', (3, 3, 1, "
                                  "16))", "('conv1/kernel', (3, 3, 3, 16))"]),
    (dict(embedding_size=16), True, ['head', 'proj/kernel', '16']),
    (dict(name='resnet34'), False, ['backbone', 'layer1/2/']),
], ids=['in_channels', 'embedding_size_with_head', 'depth'])
def test_pretrained_of_another_architecture_fails(full, model, head, words):
  options = {**_resnet().to_dict(), **model}
  config = _run_config()
  config.loss.tcm_from_data.enabled = False
  config.model = models.encoder_config(options.pop('name'), **options)
  config.pretrained = str(full.workdir)
  config.pretrained_head = head
  with pytest.raises(ValueError) as error:
    train.create_model(config, NUM_CLASSES, train.create_objective(config))
  message = str(error.value)
  assert message.startswith('pretrained')
  for word in words:
    assert word in message, message


def test_another_embedding_size_without_the_head_loads(full):
  saved = _plain(_orbax_state(full.workdir / 'checkpoints' / str(NUM_STEPS)))
  _, params, _ = _from_run(full.workdir, embedding_size=16)
  _assert_same(params['encoder']['backbone'],
               saved['params']['encoder']['backbone'], 'backbone')
  assert params['encoder']['head']['proj']['kernel'].shape[-1] == 16


def test_pretrained_without_checkpoints_fails(tmp_path, full):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match='No tcm_jax checkpoint'):
    _from_run(empty)
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='No tcm_jax checkpoint'):
    _from_run(tmp_path / 'run')
  with pytest.raises(FileNotFoundError, match='does not exist'):  # no step 3
    _from_run(full.workdir / 'checkpoints' / '3')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    _from_run(tmp_path / 'no_such_run', head=True)


def test_pretrained_head_without_pretrained_is_an_error():
  config = config_lib.default_config()
  config.pretrained_head = True
  with pytest.raises(ValueError, match='pretrained_head must be False '
                     'without pretrained'):
    config_lib.check_config(config)


@pytest.mark.parametrize('name', ['model.safetensors', 'model.npz'])
def test_pretrained_head_needs_a_run_not_a_weight_file(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(b'not read: the check comes first')
  with pytest.raises(ValueError, match='pretrained_head=True needs a tcm_jax '
                     'run') as error:
    _from_run(path, head=True)
  assert name in str(error.value)


# --- 2. hard_pair_fractions ---------------------------------------------------


def _numpy_fractions(z, labels, margin_pos, margin_neg):
  """The full matrix in float64; rows compared by cosine, self pairs out."""
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = z @ z.T
  same = labels[:, None] == labels[None, :]
  off = ~np.eye(len(z), dtype=bool)
  pos, neg = same & off, ~same
  return {'hard_pos_fraction': np.sum(pos & (s <= margin_pos)) / max(
              np.sum(pos), 1),
          'hard_neg_fraction': np.sum(neg & (s >= margin_neg)) / max(
              np.sum(neg), 1)}


def _fraction_case(seed=0, n=37, dim=4):
  """Clustered rows, a class of one (no positive pair), margins between
  neighbouring similarities (no pair within rounding of a margin)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=n)
  labels[-1] = 9  # alone in its class
  centres = rng.normal(size=(10, dim))
  z = centres[labels] + 0.8 * rng.normal(size=(n, dim))
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = np.sort(np.unique((unit @ unit.T).round(12)))

  def between(q):
    i = int(q * (len(s) - 2))
    return float((s[i] + s[i + 1]) / 2)
  return z, labels, between(0.6), between(0.3)


@pytest.mark.parametrize('block', [1, 5, 36, 37, 2048])
def test_hard_pair_fractions_against_numpy(block):
  z, labels, margin_pos, margin_neg = _fraction_case()
  expected = _numpy_fractions(z, labels, margin_pos, margin_neg)
  assert 0.1 < expected['hard_pos_fraction'] < 0.9
  assert 0.1 < expected['hard_neg_fraction'] < 0.9
  got = margins_lib.hard_pair_fractions(z, labels, margin_pos, margin_neg,
                                        block=block)
  assert got == pytest.approx(expected, abs=1e-12)

  # Rows scaled by 1e20 (float32: their squares overflow it) or 1e-20, or
  # by 1e200 in float64: a cosine does not see the scale.
  scale = np.ones(len(z))
  scale[::3], scale[1::3] = 1e20, 1e-20
  scaled = (z * scale[:, None]).astype(np.float32)
  expected32 = _numpy_fractions(z.astype(np.float32).astype(np.float64),
                                labels, margin_pos, margin_neg)
  assert margins_lib.hard_pair_fractions(
      scaled, labels, margin_pos, margin_neg, block=block) == pytest.approx(
          expected32, abs=1e-12)
  huge = z * np.where(scale > 1, 1e200, 1.0)[:, None]
  with np.errstate(over='ignore'):
    assert np.isinf(np.sum(huge ** 2))  # a plain norm would overflow
  assert margins_lib.hard_pair_fractions(
      huge, labels, margin_pos, margin_neg, block=block) == pytest.approx(
          expected, abs=1e-12)


def test_hard_pair_fractions_of_one_class_or_only_singletons():
  z, _, margin_pos, margin_neg = _fraction_case(n=9)
  one_class = margins_lib.hard_pair_fractions(z, np.zeros(9, int),
                                              margin_pos, margin_neg, block=4)
  assert one_class['hard_neg_fraction'] == 0.0  # no negative pair at all
  assert one_class == pytest.approx(
      _numpy_fractions(z, np.zeros(9, int), margin_pos, margin_neg))
  singletons = margins_lib.hard_pair_fractions(z, np.arange(9), margin_pos,
                                               margin_neg, block=4)
  assert singletons['hard_pos_fraction'] == 0.0
  # Every pair hard at margins that take in every similarity.
  assert margins_lib.hard_pair_fractions(
      z, np.arange(9) % 2, 1.0, -1.0, block=4) == {'hard_pos_fraction': 1.0,
                                                   'hard_neg_fraction': 1.0}


# --- 3. margins_from_embeddings -----------------------------------------------


def _numpy_margins(z, labels, hard_pos_fraction, hard_neg_fraction, *,
                   with_self=False):
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = z @ z.T
  same = labels[:, None] == labels[None, :]
  off = np.ones_like(same) if with_self else ~np.eye(len(z), dtype=bool)
  return (float(np.quantile(s[same & off], hard_pos_fraction)),
          float(np.quantile(s[~same], 1 - hard_neg_fraction)))


@pytest.mark.parametrize('fractions', [(0.2, 0.01), (0.5, 0.3), (0.9, 0.6)])
def test_margins_from_embeddings_are_the_quantiles_of_the_pairs(fractions):
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(4), 10)
  z = rng.normal(size=(4, 6))[labels] + rng.normal(size=(40, 6))
  z[::4] *= 1e20  # the scale of a row does not matter
  pos, neg = fractions
  expected = _numpy_margins(z, labels, pos, neg)
  got = margins_lib.margins_from_embeddings(
      z, labels, hard_pos_fraction=pos, hard_neg_fraction=neg)
  # The similarities are rounded to float32 before the selection.
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-7)
  # The tolerance tells apart the neighbouring mistakes: self pairs taken
  # as positives, or the fractions the wrong way round.
  wrong = [_numpy_margins(z, labels, pos, neg, with_self=True),
           _numpy_margins(z, labels, 1 - pos, 1 - neg)]
  for other in wrong:
    assert np.max(np.abs(np.subtract(other, expected))) > 1e-3
  # The margins make about those fractions hard, as they are meant to.
  hard = margins_lib.hard_pair_fractions(z, labels, *got)
  assert hard['hard_pos_fraction'] == pytest.approx(pos, abs=1 / 360 + 1e-9)
  assert hard['hard_neg_fraction'] == pytest.approx(neg, abs=1 / 1200 + 1e-9)


# --- 4. The step's margins are an argument ------------------------------------


def _compile_events():
  """Counts JAX's tracing and compilation events while listening."""
  counted = []

  def listener(event, *args, **kwargs):  # pylint: disable=unused-argument
    if event.startswith(('/jax/core/compile', '/jax/compilation_cache')):
      counted.append(event)
  return counted, listener


def test_train_step_takes_the_margins_without_recompiling():
  config = _run_config()
  config.loss.tcm_from_data.enabled = False
  moved = config.copy_and_resolve_references()
  moved.loss.tcm.margin_pos, moved.loss.tcm.margin_neg = 0.7, 0.3
  mesh = parallel.data_mesh(jax.devices()[:1])
  steps_per_epoch = 56  # digits' 901 training images in batches of 16
  state, step, _ = train.create_training(
      config, num_classes=4, steps_per_epoch=steps_per_epoch, mesh=mesh)
  _, moved_step, _ = train.create_training(
      moved, num_classes=4, steps_per_epoch=steps_per_epoch, mesh=mesh)
  initial = jax.device_get(state)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
           'label': np.repeat(np.arange(4, dtype=np.int32), 4)}

  def run(step_fn, *margins):
    # A fresh copy each time: the step donates the state it is given.
    new, metrics = step_fn(parallel.replicate(initial, mesh),
                           parallel.shard_batch(batch, mesh), *margins)
    return jax.device_get((new, metrics))

  by_argument = run(step, (0.7, 0.3))
  by_config = run(moved_step)
  for got, want in zip(jax.tree.leaves(by_argument),
                       jax.tree.leaves(by_config)):
    np.testing.assert_array_equal(got, want)
  assert bool(by_argument[1]['finite'])
  # The config's margins are the default; other margins, another loss.
  default = run(step)
  np.testing.assert_array_equal(default[1]['tcm'],
                                run(step, (0.9, 0.5))[1]['tcm'])
  assert default[1]['tcm'] != by_argument[1]['tcm']
  assert _differs(default[0].params, by_argument[0].params)

  # New margin values are new arguments, not a new program: no tracing,
  # no compilation, no cache lookup.
  counted, listener = _compile_events()
  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(listener)
  try:
    none = run(step, (-1.0, 1.0))   # no pair is hard
    every = run(step, (1.0, -1.0))  # every pair is hard
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(listener)
  assert counted == []
  assert float(none[1]['tcm']) == 0.0
  assert float(none[1]['hard_pos_fraction']) == 0.0
  assert float(none[1]['hard_neg_fraction']) == 0.0
  assert float(every[1]['hard_pos_fraction']) == 1.0
  assert float(every[1]['hard_neg_fraction']) == 1.0
  assert float(every[1]['tcm']) > float(default[1]['tcm']) > 0
  # The listener does hear a compilation (the check above can fail).
  counted, listener = _compile_events()
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert counted


# --- 5. Margins from the data, in a run ---------------------------------------


def test_margins_are_estimated_before_the_first_step_and_every_n(full):
  lines = _lines(full.workdir)
  margins = [line for line in lines if line['kind'] == 'margins']
  # Not after the last step (6), though it is a multiple of every_steps.
  assert [m['step'] for m in margins] == ESTIMATED_AT
  assert len(full.estimates) == len(ESTIMATED_AT)
  train_split = datasets.load_split('digits', 'train')
  for m in margins:
    assert m['num_samples'] == min(MAX_SAMPLES, len(train_split))
    assert -1 <= m['margin_neg'] <= 1 and -1 <= m['margin_pos'] <= 1
  # Digits has no validation side: the training classes' images, never the
  # test classes'.
  test_classes = set(datasets.load_split('digits', 'test').labels.tolist())
  for labels in full.estimates:
    assert len(labels) == MAX_SAMPLES
    assert set(labels.tolist()) <= set(train_split.labels.tolist())
    assert not set(labels.tolist()) & test_classes
  np.testing.assert_array_equal(full.estimates[0], full.estimates[2])  # same
  # Each estimate is what the steps after it train with.
  by_step = {m['step']: (m['margin_pos'], m['margin_neg']) for m in margins}
  assert full.step_margins == [
      by_step[(step - 1) // EVERY_STEPS * EVERY_STEPS]
      for step in range(1, NUM_STEPS + 1)]
  assert len({m['margin_pos'] for m in margins}) == 3  # re-estimated


def test_metrics_json_holds_the_margins(full):
  saved = _metrics_json(full.workdir)
  logged = writers.logged_margins(str(full.workdir))
  assert [m['step'] for m in logged] == ESTIMATED_AT
  assert saved['tcm_margins'] == logged
  assert logged == [{k: v for k, v in line.items() if k != 'kind'}
                    for line in _lines(full.workdir)
                    if line['kind'] == 'margins']
  pairs = saved['tcm_pairs']
  assert pairs['from_data'] is True
  assert pairs['margin_pos'] == logged[-1]['margin_pos']
  assert pairs['margin_neg'] == logged[-1]['margin_neg']
  # The fractions are those of the final split's embeddings at them.
  with np.load(full.workdir / 'embeddings.npz') as data:
    z, labels = data['embeddings'], data['labels']
  assert set(labels.tolist()) == {5, 6, 7, 8, 9}  # the test split's
  expected = _numpy_fractions(z, labels, pairs['margin_pos'],
                              pairs['margin_neg'])
  assert pairs['hard_pos_fraction'] == pytest.approx(
      expected['hard_pos_fraction'], abs=1e-12)
  assert pairs['hard_neg_fraction'] == pytest.approx(
      expected['hard_neg_fraction'], abs=1e-12)


def test_report_names_the_margins(full):
  report = (full.workdir / 'report.md').read_text()
  assert (f'from the data: {100 * HARD_POS_FRACTION:g}% of positive and 1% of '
          'negative pairs hard, re-estimated every 2 steps') in report
  for m in writers.logged_margins(str(full.workdir)):
    assert (f'step {m["step"]}: {m["margin_pos"]:.3f}/'
            f'{m["margin_neg"]:.3f}') in report


def test_margins_are_in_the_checkpoints_data_state(full):
  logged = {m['step']: (m['margin_pos'], m['margin_neg'])
            for m in writers.logged_margins(str(full.workdir))}
  expected = {2: logged[2], 4: logged[4], 6: logged[4]}
  for step, margins in expected.items():
    path = full.workdir / 'checkpoints' / str(step) / 'data_state'
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
      data_state = checkpointer.restore(path)
    assert data_state == {'step': step, 'tcm_margins': list(margins)}


# --- 6. Resume keeps the margins ----------------------------------------------


def test_a_resumed_run_trains_with_the_checkpointed_margins(full, resumed):
  logged = {m['step']: (m['margin_pos'], m['margin_neg'])
            for m in writers.logged_margins(str(full.workdir))}
  # The first part: margins at 0 and 2, steps 1-3, then the stop.
  assert resumed.first_part_calls == STOP_AFTER
  assert resumed.first_part_estimates == 2
  assert [(l['kind'], l['step']) for l in resumed.first_part_lines
          if l['kind'] == 'margins'] == [('margins', 0), ('margins', 2)]
  # The second part restores step 2 and its margins (no estimate at the
  # start), trains steps 3-6, and estimates once more, after step 4.
  second = resumed.step_margins[resumed.first_part_calls:]
  assert len(second) == NUM_STEPS - CHECKPOINT_EVERY
  assert len(resumed.estimates) == resumed.first_part_estimates + 1
  assert second[0] == logged[2]
  assert second == full.step_margins[CHECKPOINT_EVERY:]
  # Everything as if it had not been interrupted.
  assert writers.logged_margins(str(resumed.workdir)) == (
      writers.logged_margins(str(full.workdir)))
  assert resumed.final == full.final
  saved, reference = (_metrics_json(resumed.workdir),
                      _metrics_json(full.workdir))
  for key in ('tcm_pairs', 'tcm_margins', 'bootstrap', 'opis', 'map_at_r'):
    assert saved[key] == reference[key], key
  with np.load(resumed.workdir / 'embeddings.npz') as a, np.load(
      full.workdir / 'embeddings.npz') as b:
    np.testing.assert_array_equal(a['embeddings'], b['embeddings'])
  kinds = [(l['kind'], l['step']) for l in _lines(resumed.workdir)]
  assert kinds.count(('train', 3)) == 1  # step 3's first line was dropped
  assert [k for k in kinds if k[0] == 'margins'] == [
      ('margins', step) for step in ESTIMATED_AT]


# --- 7. Warnings on hard fractions --------------------------------------------


@pytest.mark.parametrize('values, parts', [
    ({'hard_pos_fraction': 0.5, 'hard_neg_fraction': 0.01}, []),
    ({'hard_pos_fraction': 0.95, 'hard_neg_fraction': 0.001}, []),
    ({'hard_pos_fraction': 0.951, 'hard_neg_fraction': 0.01}, ['positive']),
    ({'hard_pos_fraction': 0.5, 'hard_neg_fraction': 0.0009}, ['negative']),
    ({'hard_pos_fraction': 0.0, 'hard_neg_fraction': 1.0},
     ['positive', 'negative']),
    ({'loss': 1.0}, []),  # no TCM: nothing to warn about
], ids=['typical', 'at_the_bounds', 'pos_almost_all', 'neg_almost_none',
        'both', 'no_tcm'])
def test_warn_hard_fractions(values, parts, caplog):
  with caplog.at_level(logging.WARNING, logger='absl'):
    margins_lib.warn_hard_fractions(7, values)
  messages = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(messages) == len(parts), messages
  for part, message in zip(parts, messages):
    assert message.startswith('Step 7:')
    assert f'{part} pairs are hard for TCM' in message
    fraction = values[f'hard_{part[:3]}_fraction']
    assert f'{100 * fraction:.1f}%' in message
    assert ('does almost nothing' if fraction < 0.001 else
            'acts on nearly every pair') in message


def test_a_run_with_almost_every_positive_pair_hard_is_warned_about(full):
  almost_all = [line['step'] for line in _lines(full.workdir)
                if line['kind'] == 'train'
                and line['hard_pos_fraction'] > 0.95]
  assert almost_all  # the margins from the data make ~99% of them hard
  for step in almost_all:
    assert any(m.startswith(f'Step {step}:')
               and 'positive pairs are hard for TCM' in m
               and 'acts on nearly every pair' in m
               for m in full.warnings), full.warnings


# --- 8. Config checks ---------------------------------------------------------


@pytest.mark.parametrize('key, value', [
    ('loss.tcm_from_data.hard_pos_fraction', 0.0),
    ('loss.tcm_from_data.hard_pos_fraction', 1.0),
    ('loss.tcm_from_data.hard_neg_fraction', 0.0),
    ('loss.tcm_from_data.hard_neg_fraction', 1.0),
    ('loss.tcm_from_data.every_steps', -1),
    ('loss.tcm_from_data.max_samples', 2),
    ('eval.bootstrap_resamples', -1),
    ('eval.bootstrap_confidence', 1.0),
    ('eval.bootstrap_confidence', 0.0),
    ('eval.engine', 'fast'),
])
def test_check_config_rejects(key, value):
  config = config_lib.default_config()
  config.loss.tcm_from_data.enabled = True
  *sections, name = key.split('.')
  section = config
  for part in sections:
    section = section[part]
  section[name] = value
  with pytest.raises(ValueError) as error:
    config_lib.check_config(config)
  assert str(error.value).startswith(f'{key} must be')
  assert repr(value) in str(error.value)


def test_check_config_rejects_margins_from_data_without_tcm():
  config = config_lib.default_config()
  config.loss.tcm_from_data.enabled = True
  config_lib.check_config(config)  # with TCM: fine
  config.loss.tcm.enabled = False
  with pytest.raises(ValueError, match=r'^loss\.tcm_from_data\.enabled must '
                     r'be False when loss\.tcm\.enabled is False'):
    config_lib.check_config(config)


@pytest.mark.parametrize('side', ['test', 'val', 'pretrain'])
def test_train_side_must_be_one_the_dataset_trains_on(side):
  config = _run_config()
  config.dataset.train_side = side
  # Refused by check_config, before anything is built, and by create_inputs
  # (for a config that skipped the check), in the same words.
  for refuses in (config_lib.check_config, inputs_lib.create_inputs):
    with pytest.raises(ValueError) as error:
      refuses(config)
    message = str(error.value)
    assert message.startswith("dataset.train_side must be one of ['train'] "
                              'for digits'), message
    assert repr(side) in message


# --- 9. Bootstrap intervals ---------------------------------------------------


def test_bootstrap_intervals_are_seeded_and_hold_the_estimate(full, resumed):
  saved = _metrics_json(full.workdir)
  bootstrap = saved['bootstrap']
  assert bootstrap['num_resamples'] == 200
  assert bootstrap['confidence'] == 0.95
  assert bootstrap['over'] == 'classes'
  # The same config run a second time (once interrupted, in its own
  # workdir): the same intervals.
  assert bootstrap == _metrics_json(resumed.workdir)['bootstrap']
  intervals = bootstrap['intervals']
  values = {'recall_at_1': saved['recall_at_k']['1'], 'opis': saved['opis']}
  for name, value in values.items():
    interval = intervals[name]
    assert interval['low'] <= value <= interval['high'], (name, interval)
    assert interval['low'] < interval['high'], (name, interval)
    assert interval['std'] > 0
  # They are those of the saved embeddings with the recorded seed (another
  # seed gives others: the seed is what makes them repeat).
  with np.load(full.workdir / 'embeddings.npz') as data:
    evaluation = metrics_lib.evaluate_embeddings(data['embeddings'],
                                                 data['labels'])
  again_intervals = metrics_lib.class_bootstrap(
      evaluation, num_resamples=200, confidence=0.95, seed=bootstrap['seed'])
  other = metrics_lib.class_bootstrap(evaluation, num_resamples=200,
                                      confidence=0.95, seed=1)
  for name in values:
    assert again_intervals[name].low == pytest.approx(intervals[name]['low'],
                                                      abs=1e-9)
    assert again_intervals[name].high == pytest.approx(
        intervals[name]['high'], abs=1e-9)
  assert any(other[n].low != again_intervals[n].low
             or other[n].high != again_intervals[n].high for n in values)


# --- From the review: the margins' source, restarts, the checkpoint read ------


def test_margins_come_from_the_validation_classes_when_there_are_some():
  config = _run_config()
  train_split, val_split, test_split = (
      datasets.Split(name, labels, list(range(len(labels))),
                           np.arange(len(labels)), lambda record: record)
      for name, labels in (('x/train', np.repeat(np.arange(5), 30)),
                           ('x/val', np.repeat(np.arange(5, 8), 40)),
                           ('x/test', np.repeat(np.arange(8, 10), 4))))
  inputs = inputs_lib.Inputs(train_split, test_split, val_split,
                             np.arange(5), None, None, None, 1)
  config.loss.tcm_from_data.max_samples = 50
  sample = margins_lib.margin_sample(config, inputs)
  assert sample.name == 'x/val' and len(sample) == 50
  assert set(sample.labels.tolist()) <= {5, 6, 7}
  # Without validation classes, the training classes; never the test ones.
  sample = margins_lib.margin_sample(config, inputs._replace(val=None))
  assert sample.name == 'x/train' and set(sample.labels.tolist()) <= set(
      range(5))
  # The same seeded rows at every estimate.
  again = margins_lib.margin_sample(config, inputs)
  np.testing.assert_array_equal(again.labels, margins_lib.margin_sample(
      config, inputs).labels)


def test_a_restart_without_checkpoint_drops_the_earlier_attempts_lines(
    tmp_path):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write(json.dumps({'step': 0, 'kind': 'margins', 'margin_pos': 0.6,
                        'margin_neg': 0.4, 'num_samples': 9}) + '\n')
  writer = writers.MetricsWriter(str(tmp_path), -1)
  writer.write(0, 'margins', {'margin_pos': 0.7, 'margin_neg': 0.3,
                              'num_samples': 9})
  writer.close()
  assert writers.logged_margins(str(tmp_path)) == [
      {'step': 0, 'margin_pos': 0.7, 'margin_neg': 0.3, 'num_samples': 9}]


def test_resuming_past_the_runs_last_step_is_an_error(full, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(full.workdir, workdir)
  config = _run_config()
  config.train.num_steps = NUM_STEPS - 2
  with pytest.raises(ValueError, match=f'checkpoint at step {NUM_STEPS}, '
                     f'past this run\'s {NUM_STEPS - 2} steps'):
    train.train_and_evaluate(config, str(workdir),
                             devices=jax.local_devices()[:1])


def test_a_workdir_gives_its_latest_checkpoint_not_the_best_scored(tmp_path):
  state = lambda w: {'params': {'encoder': {'backbone': {'w': np.full(2, w)}}},
                     'model_state': {}}
  with checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'), keep=5,
                                   best_metric='recall_at_1') as ckpt:
    for step, recall in ((1, 0.9), (2, 0.1)):
      ckpt.save(step, state(float(step)), data_state={'step': step},
                config={'train': {'best_metric': 'recall_at_1'}},
                metrics={'recall_at_1': recall})
  weights = checkpoint_lib.load_run_weights(str(tmp_path))
  assert weights.step == 2
  np.testing.assert_array_equal(weights.params['backbone']['w'], [2.0, 2.0])
  one = checkpoint_lib.load_run_weights(str(tmp_path / 'checkpoints' / '1'))
  assert one.step == 1


@pytest.mark.parametrize('pretrained, warns', [('', True),
                                               ('/runs/pretrain', False)])
def test_margins_from_an_untrained_start_warn(pretrained, warns, caplog):
  # The glyph study: margins estimated from a model that starts untrained
  # follow its collapsed early embedding; the run says so at the start.
  config = _run_config()
  config.pretrained = pretrained
  labels = np.repeat(np.arange(5), 30)
  split = datasets.Split('x/train', labels, list(range(len(labels))),
                         np.arange(len(labels)), lambda record: record)
  inputs = inputs_lib.Inputs(split, split, None, np.arange(5), None, None,
                             None, 1)
  with caplog.at_level(logging.WARNING, logger='absl'):
    margins_lib.margin_sample(config, inputs)
  untrained = [r for r in caplog.records
               if 'a model that starts untrained' in r.getMessage()]
  assert bool(untrained) == warns
