"""Tests for tcm_jax.checkpoint: round trips, retention, damaged checkpoints."""

import errno
import json
import os
import re
import shutil
from unittest import mock

from absl import logging
from etils import epath
import flax
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tcm_jax import _agreement
from tcm_jax import _checksums
from tcm_jax import checkpoint as checkpoint_lib
from tcm_jax import config as config_lib
from tcm_jax.checkpoint import Checkpointer
from tcm_jax.checkpoint import json_safe


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  rest: nnx.State
  opt_state: optax.OptState


def _train_state(seed):
  """A train state whose values (all but Adam's count) depend on `seed`."""
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  # One update, so that Adam's count and moments are not all zeros.
  grads = jax.tree.map(lambda p: jnp.full_like(p, seed), params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return TrainState(step=jnp.int32(seed), rest=rest, opt_state=opt_state,
                    params=optax.apply_updates(params, updates))


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _trees_differ(a, b):
  return any(not np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _save_steps(directory, steps, **kwargs):
  """Saves `_train_state(step)` at each step; returns the states."""
  states = {step: _train_state(step) for step in steps}
  with Checkpointer(directory, **kwargs) as checkpointer:
    for step, state in states.items():
      assert checkpointer.save(step, state, data_state={'step': step},
                               config={'seed': step},
                               metrics={'recall': step / 10})
  return states


@pytest.mark.parametrize('async_save', [True, False])
def test_round_trip_is_exact(tmp_path, async_save):
  state = _train_state(1)
  target = _train_state(7)
  assert _trees_differ(state, target)
  config = {'model': {'sizes': (64, 32), 'dropout': None},
            'lr': np.float32(0.5), 'steps': np.int64(100), 'name': 'digits'}
  with Checkpointer(str(tmp_path), async_save=async_save) as checkpointer:
    assert checkpointer.save(5, state, data_state={'step': 120, 'epoch': 2},
                             config=config)
    restored = checkpointer.restore_latest(target)
  assert restored.step == 5
  assert isinstance(restored.state, TrainState)
  assert isinstance(restored.state.params, nnx.State)
  _assert_trees_equal(restored.state, state)
  assert restored.data_state == {'step': 120, 'epoch': 2}
  assert restored.config == {
      'model': {'sizes': [64, 32], 'dropout': None},
      'lr': 0.5, 'steps': 100, 'name': 'digits'}


@pytest.mark.parametrize('abstract', [True, False])
def test_restore_puts_arrays_on_the_targets_shardings(tmp_path, abstract):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = _train_state(2)
  assert all(not leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
             for leaf in jax.tree.leaves(state))
  if abstract:
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        state)
  else:
    target = jax.device_put(_train_state(3), replicated)
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(4, state, data_state={}, config={})
    restored = checkpointer.restore_latest(target)
  for leaf in jax.tree.leaves(restored.state):
    assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
  _assert_trees_equal(restored.state, state)


def test_relative_directory_is_taken_from_the_working_directory(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state = _train_state(1)
  with Checkpointer('run/checkpoints') as checkpointer:
    assert checkpointer.save(1, state, data_state={}, config={})
    restored = checkpointer.restore_latest(_train_state(2))
  _assert_trees_equal(restored.state, state)
  assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['1']


def test_empty_directory_has_nothing_to_restore(tmp_path):
  with Checkpointer(str(tmp_path / 'new'), best_metric='recall') as ckpt:
    assert ckpt.restore_latest(_train_state(1)) is None
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    assert ckpt.best_step() is None


@pytest.mark.parametrize('best_metric, best_mode, kept, best', [
    (None, 'max', [5, 6], None),
    ('recall', 'max', [2, 5, 6], 2),
    ('recall', 'min', [3, 5, 6], 3),
])
def test_retention_keeps_the_last_checkpoints_and_the_best(
    tmp_path, best_metric, best_mode, kept, best):
  recalls = {1: 0.5, 2: 0.9, 3: 0.1, 4: None, 5: 0.6, 6: 0.7}
  state = {'w': jnp.ones(3)}
  with Checkpointer(str(tmp_path), keep=2, best_metric=best_metric,
                    best_mode=best_mode) as checkpointer:
    for step, recall in recalls.items():
      checkpointer.save(step, state, data_state={}, config={},
                        metrics=None if recall is None else {'recall': recall})
      if step == 5:
        checkpointer.wait_until_finished()
        # Step 4 has no metrics but is among the last two: it stays.
        assert 4 in checkpointer.all_steps()
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == kept
    assert checkpointer.best_step() == best
  assert sorted(int(name) for name in os.listdir(tmp_path)) == kept


def test_best_checkpoint_survives_a_restart(tmp_path):
  state = {'w': jnp.ones(3)}
  kwargs = {'keep': 1, 'best_metric': 'loss', 'best_mode': 'min'}
  with Checkpointer(str(tmp_path), **kwargs) as checkpointer:
    for step, loss in [(1, 0.3), (2, 0.1), (3, 0.2)]:
      checkpointer.save(step, state, data_state={}, config={},
                        metrics={'loss': loss})
  with Checkpointer(str(tmp_path), **kwargs) as checkpointer:
    checkpointer.save(4, state, data_state={}, config={},
                      metrics={'loss': 0.4})
    checkpointer.wait_until_finished()
    assert checkpointer.all_steps() == [2, 4]
    assert checkpointer.best_step() == 2


def _damage(step_dir, *, only_arrays, how):
  """Truncates (or deletes) the files Orbax wrote for one step."""
  paths = [os.path.join(root, name)
           for root, _, names in os.walk(step_dir) for name in names
           # TensorStore's OCDBT keeps array bytes in files under `d/`.
           if not only_arrays or os.path.basename(root) == 'd']
  assert paths
  for path in paths:
    if how == 'delete':
      os.remove(path)
    else:
      os.truncate(path, os.path.getsize(path) // 2 if how == 'half' else 0)


# After a failed read, Orbax leaves TensorStore reads pending on an event loop
# it has closed; their late callbacks raise 'Event loop is closed' in a thread.
_IGNORE_CLOSED_LOOP = pytest.mark.filterwarnings(
    r'ignore:(?s).*Event loop is closed'
    ':pytest.PytestUnraisableExceptionWarning')


def _warnings(mock_warning):
  return [call.args[0] % call.args[1:] for call in mock_warning.call_args_list]


@_IGNORE_CLOSED_LOOP
@pytest.mark.parametrize('only_arrays, how', [
    (False, 'empty'), (False, 'half'),
    (True, 'empty'), (True, 'half'), (True, 'delete')])
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(
    tmp_path, only_arrays, how):
  directory = str(tmp_path)
  states = _save_steps(directory, [1, 2, 3], keep=5, best_metric='recall')
  _damage(tmp_path / '3', only_arrays=only_arrays, how=how)
  # A fresh Checkpointer, as after a restart: Orbax must start despite
  # step 3's truncated metadata and metrics files.
  checkpointer = Checkpointer(directory, keep=5, best_metric='recall')
  with mock.patch.object(logging, 'warning') as mock_warning:
    restored = checkpointer.restore_latest(_train_state(9))
  assert restored.step == 2
  _assert_trees_equal(restored.state, states[2])
  assert _trees_differ(restored.state, states[3])
  assert restored.data_state == {'step': 2}
  assert restored.config == {'seed': 2}
  assert any('step 3' in message and directory in message
             and 'Error' in message for message in _warnings(mock_warning))
  # The damaged checkpoint stays on disk, and training can go on past it.
  assert os.path.isdir(tmp_path / '3')
  assert checkpointer.save(4, states[1], data_state={'step': 4}, config={},
                           metrics={'recall': 0.0})
  restored = checkpointer.restore_latest(_train_state(9))
  checkpointer.close()
  assert restored.step == 4
  _assert_trees_equal(restored.state, states[1])


@_IGNORE_CLOSED_LOOP
def test_no_readable_checkpoint_raises_listing_every_step(tmp_path):
  _save_steps(str(tmp_path), [1, 2])
  for step in ('1', '2'):
    _damage(tmp_path / step, only_arrays=True, how='empty')
  with Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(RuntimeError, match='can be read') as error:
      checkpointer.restore_latest(_train_state(9))
  assert 'step 1:' in str(error.value) and 'step 2:' in str(error.value)


@pytest.mark.parametrize('step', [3, 2])
@pytest.mark.parametrize('force', [False, True])
def test_saving_at_or_below_the_latest_step_returns_false(
    tmp_path, step, force):
  first, second = _train_state(1), _train_state(2)
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.save(3, first, data_state={'n': 1}, config={})
    # Asked before the first save has finished writing.
    assert not checkpointer.save(step, second, data_state={'n': 2}, config={},
                                 force=force)
    restored = checkpointer.restore_latest(second)
    assert checkpointer.all_steps() == [3]
    assert checkpointer.save(4, second, data_state={'n': 2}, config={},
                             force=force)
  assert sorted(os.listdir(tmp_path)) == ['3', '4']
  assert restored.data_state == {'n': 1}
  _assert_trees_equal(restored.state, first)


def test_directory_that_is_a_file_is_rejected(tmp_path):
  path = tmp_path / 'not_a_directory'
  path.write_text('')
  with pytest.raises(ValueError, match=r'directory must be a directory.*file'):
    Checkpointer(str(path))


@pytest.mark.parametrize('kwargs, message', [
    ({'keep': 0}, r'keep must be an integer >= 1, got 0\.'),
    # Once let through to Orbax (True as 1, 2.5 as a count).
    ({'keep': True}, r'keep must be an integer >= 1, got True\.'),
    ({'keep': 2.5}, r'keep must be an integer >= 1, got 2\.5\.'),
    ({'best_mode': 'median'},
     r"best_mode must be one of \['max', 'min'\], got 'median'\."),
])
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    Checkpointer(str(tmp_path), **kwargs)


def test_metrics_without_the_best_metric_are_rejected(tmp_path):
  with Checkpointer(str(tmp_path), best_metric='recall') as checkpointer:
    with pytest.raises(ValueError,
                       match=r"best_metric 'recall'; received keys \['loss'\]"):
      checkpointer.save(1, {'w': jnp.ones(2)}, data_state={}, config={},
                        metrics={'loss': 0.1})
    assert checkpointer.all_steps() == []


def test_json_safe_makes_plain_python_values():
  safe = json_safe({'pair': (1, (2, 3)), 'f': np.float32(0.25),
                    'i': np.int32(4), 'b': np.bool_(True), 'none': None,
                    'array': jnp.arange(3), 1: 'int key'})
  assert safe == {'pair': [1, [2, 3]], 'f': 0.25, 'i': 4, 'b': True,
                  'none': None, 'array': [0, 1, 2], '1': 'int key'}
  assert [type(safe[key]) for key in ('f', 'i', 'b')] == [float, int, bool]
  with pytest.raises(TypeError, match='received set'):
    json_safe({'classes': {1, 2}})


# --- Damage that keeps the files' sizes: the checksums -----------------------


def _random_state(seed):
  """Incompressible arrays, so that a byte of the data file is a byte of
  an array (not of a compressed block's bookkeeping)."""
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(64, 64)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=64), jnp.float32),
          'step': jnp.int32(seed)}


def _flip_byte(step_dir):
  """Flips one bit in the middle of the step's largest array data file."""
  paths = [os.path.join(root, name)
           for root, _, names in os.walk(step_dir) for name in names
           if os.path.basename(root) == 'd']
  path = max(paths, key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x01
  with open(path, 'r+b') as f:
    f.write(data)
  assert os.path.getsize(path) == len(data)


@_IGNORE_CLOSED_LOOP
def test_flipped_bit_in_the_latest_checkpoint_falls_back_to_the_one_before(
    tmp_path):
  directory = str(tmp_path)
  states = {step: _random_state(step) for step in (1, 2, 3)}
  with Checkpointer(directory, keep=5) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state, data_state={'step': step}, config={})
  _flip_byte(tmp_path / '3')
  with Checkpointer(directory, keep=5) as checkpointer:
    with mock.patch.object(logging, 'warning') as mock_warning:
      restored = checkpointer.restore_latest(_random_state(9))
  assert restored.step == 2
  _assert_trees_equal(restored.state, states[2])
  assert any('step 3' in message and 'checksum' in message and 'w' in message
             for message in _warnings(mock_warning)), _warnings(mock_warning)


def test_non_finite_checkpoint_falls_back_to_the_one_before(tmp_path):
  good, bad = _random_state(1), _random_state(2)
  bad['b'] = bad['b'].at[3].set(jnp.nan)
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, good, data_state={}, config={})
    checkpointer.save(2, bad, data_state={}, config={})
    with mock.patch.object(logging, 'warning') as mock_warning:
      restored = checkpointer.restore_latest(_random_state(9))
  assert restored.step == 1
  _assert_trees_equal(restored.state, good)
  assert any('step 2' in message and 'NaN or infinite' in message
             for message in _warnings(mock_warning))


@_IGNORE_CLOSED_LOOP
def test_no_readable_checkpoint_is_one_line(tmp_path):
  _save_steps(str(tmp_path), [1, 2])
  for step in ('1', '2'):
    _damage(tmp_path / step, only_arrays=True, how='empty')
  with Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(RuntimeError) as error:
      checkpointer.restore_latest(_train_state(9))
  message = str(error.value)
  assert '\n' not in message and len(message) < 1500, message
  assert str(tmp_path) in message and 'new --workdir' in message


def test_load_run_weights_refuses_a_damaged_checkpoint(tmp_path):
  params = {'encoder': {'backbone': {'w': {'value': _random_state(1)['w']}}}}
  with Checkpointer(str(tmp_path / 'checkpoints')) as checkpointer:
    checkpointer.save(4, {'params': params, 'model_state': {}},
                      data_state={}, config={})
  assert checkpoint_lib.load_run_weights(str(tmp_path)).step == 4
  _flip_byte(tmp_path / 'checkpoints' / '4')
  with pytest.raises(ValueError, match=r'step 4 .*checksum') as error:
    checkpoint_lib.load_run_weights(str(tmp_path))
  assert str(tmp_path / 'checkpoints') in str(error.value)


# --- A full disk -------------------------------------------------------------

# How TensorStore (under Orbax) reports a full disk: a ValueError.
_DISK_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database: '
    'Failed to write 780586 bytes to file 17: No space left on device '
    "[os_error_code='28']")


def _assert_disk_full(error, step, directory):
  assert isinstance(error, OSError) and error.errno == errno.ENOSPC
  assert error.filename == str(directory)
  assert error.strerror == (f'Writing the checkpoint of step {step} failed '
                            '(No space left on device)')


def test_a_save_that_fails_names_the_step_the_directory_and_the_cause(
    tmp_path, monkeypatch):
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.save(1, _random_state(1), data_state={}, config={})
    monkeypatch.setattr(checkpoint_lib._Manager, 'save',
                        mock.Mock(side_effect=_DISK_FULL))
    with pytest.raises(OSError) as error:
      checkpointer.save(2, _random_state(2), data_state={}, config={})
  _assert_disk_full(error.value, 2, tmp_path)


@pytest.mark.parametrize('surfaces_in', ['check_saves', 'save', 'close'])
def test_a_background_save_that_fails_is_raised_once_naming_its_step(
    tmp_path, monkeypatch, surfaces_in):
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.save(1, _random_state(1), data_state={}, config={})
  # The write of step 1 fails in Orbax's thread: its wait raises, once.
  real_wait = checkpoint_lib._Manager.wait_until_finished
  failures = [_DISK_FULL]

  def wait(manager):
    real_wait(manager)
    if failures:
      raise failures.pop()

  monkeypatch.setattr(checkpoint_lib._Manager, 'wait_until_finished', wait)
  monkeypatch.setattr(checkpoint_lib._Manager, 'is_saving_in_progress',
                      lambda manager: False)
  with pytest.raises(OSError) as error:
    if surfaces_in == 'check_saves':
      checkpointer.check_saves()
    elif surfaces_in == 'save':
      checkpointer.save(2, _random_state(2), data_state={}, config={})
    else:
      checkpointer.close()
  _assert_disk_full(error.value, 1, tmp_path)
  checkpointer.check_saves()  # raised once: nothing more in flight
  checkpointer.close()


# --- Resuming another run -----------------------------------------------------


def test_resume_refuses_another_config_before_reading_any_array(
    tmp_path, monkeypatch):
  saved = json_safe(config_lib.default_config().to_dict())
  saved['model']['width'] = 0.25
  current = json_safe(config_lib.default_config().to_dict())
  current['model']['width'] = 0.5
  with Checkpointer(str(tmp_path / 'checkpoints')) as checkpointer:
    checkpointer.save(2, {'w': jnp.ones(4)}, data_state={'step': 2},
                      config=saved)
  restore = mock.Mock(side_effect=AssertionError('an array was read'))
  monkeypatch.setattr(Checkpointer, 'restore_latest', restore)
  with Checkpointer(str(tmp_path / 'checkpoints')) as checkpointer:
    with pytest.raises(ValueError) as error:
      # (Another width: another shape, which could not be restored at all.)
      checkpoint_lib.resume(checkpointer, {'w': jnp.ones(8)}, current, 5,
                            str(tmp_path))
  assert str(error.value) == (
      f'{tmp_path} holds a run with another config: model.width 0.25 vs 0.5 '
      "(saved vs this run's); resume it with its own config, or use a new "
      '--workdir.')
  restore.assert_not_called()


# --- What the checksums cover: a missing item, the JSON items ----------------


def _item_file(step_dir, item):
  """The JSON file Orbax writes for a JSON item."""
  return step_dir / item / 'metadata'


def _save_old_format(directory, states):
  """Checkpoints as tcm_jax wrote them before it saved checksums: three
  items, and step metadata that names only those."""
  manager = ocp.CheckpointManager(
      epath.Path(directory), item_names=('state', 'data_state', 'config'))
  try:
    for step, state in states.items():
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data_state=ocp.args.JsonSave({'step': step}),
          config=ocp.args.JsonSave({'seed': step})))
    manager.wait_until_finished()
  finally:
    manager.close()


def test_a_deleted_checksums_item_is_damage(tmp_path):
  states = {step: _random_state(step) for step in (1, 2)}
  with Checkpointer(str(tmp_path)) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state, data_state={'step': step}, config={})
  shutil.rmtree(tmp_path / '2' / 'checksums')
  real_restore = checkpoint_lib._Manager.restore
  with Checkpointer(str(tmp_path)) as checkpointer:
    with mock.patch.object(logging, 'warning') as mock_warning, \
        mock.patch.object(checkpoint_lib._Manager, 'restore', autospec=True,
                          side_effect=real_restore) as restore:
      restored = checkpointer.restore_latest(_random_state(9))
  assert restored.step == 1
  _assert_trees_equal(restored.state, states[1])
  # Step 2 read all the same: Orbax's restore ends in a barrier that every
  # process of a run must reach.
  assert [call.args[1] for call in restore.call_args_list] == [2, 1]
  assert any('step 2' in message and 'DamagedCheckpointError' in message
             and 'checksums item is missing' in message
             for message in _warnings(mock_warning)), _warnings(mock_warning)


def test_a_checkpoint_written_without_checksums_restores_on_the_finite_check(
    tmp_path):
  good, bad = _random_state(1), _random_state(2)
  bad['w'] = bad['w'].at[0, 0].set(jnp.inf)
  _save_old_format(tmp_path, {1: good, 2: bad})
  with Checkpointer(str(tmp_path)) as checkpointer:
    with mock.patch.object(logging, 'warning') as mock_warning:
      restored = checkpointer.restore_latest(_random_state(9))
  assert restored.step == 1
  _assert_trees_equal(restored.state, good)
  assert restored.data_state == {'step': 1}
  messages = _warnings(mock_warning)
  assert any('step 2' in m and 'NaN or infinite' in m for m in messages)
  assert any(f'step 1 in {tmp_path} has no checksums' in m
             and 'accepted on the finite check only' in m
             for m in messages), messages


def _encoder_checkpoint(directory, **save):
  params = {'encoder': {'backbone': {'w': {'value': _random_state(1)['w']}}}}
  state = {'params': params, 'model_state': {}}
  if save.pop('old_format', False):
    _save_old_format(directory, {4: state})
  else:
    with Checkpointer(str(directory)) as checkpointer:
      checkpointer.save(4, state, data_state={}, config={'seed': 4})
  return params


def test_load_run_weights_refuses_a_checkpoint_without_its_checksums_item(
    tmp_path):
  _encoder_checkpoint(tmp_path / 'checkpoints')
  shutil.rmtree(tmp_path / 'checkpoints' / '4' / 'checksums')
  with pytest.raises(ValueError, match=r'step 4 .*checksums item is missing'):
    checkpoint_lib.load_run_weights(str(tmp_path))


def test_load_run_weights_reads_an_old_checkpoint_with_a_warning(tmp_path):
  params = _encoder_checkpoint(tmp_path / 'checkpoints', old_format=True)
  with mock.patch.object(logging, 'warning') as mock_warning:
    weights = checkpoint_lib.load_run_weights(str(tmp_path))
  np.testing.assert_array_equal(
      weights.params['backbone']['w'],
      params['encoder']['backbone']['w']['value'])
  assert any('finite check only' in m for m in _warnings(mock_warning))


def _rewrite_json(path, change):
  with open(path) as f:
    value = json.load(f)
  change(value)
  with open(path, 'w') as f:
    json.dump(value, f)


@pytest.mark.parametrize('item, change', [
    ('config', lambda config: config.update(seed=3)),
    ('data_state', lambda data_state: data_state.update(step=7)),
])
def test_a_changed_json_item_is_damage(tmp_path, item, change):
  states = {step: _random_state(step) for step in (1, 2)}
  with Checkpointer(str(tmp_path)) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state, data_state={'step': step},
                        config={'seed': step})
  _rewrite_json(_item_file(tmp_path / '2', item), change)  # still valid JSON
  with Checkpointer(str(tmp_path)) as checkpointer:
    with mock.patch.object(logging, 'warning') as mock_warning:
      restored = checkpointer.restore_latest(_random_state(9))
  assert (restored.step, restored.data_state, restored.config) == (
      1, {'step': 1}, {'seed': 1})
  assert any('step 2' in message and f'the {item} item differs' in message
             for message in _warnings(mock_warning)), _warnings(mock_warning)


def test_checksums_without_json_digests_check_the_arrays_only(tmp_path):
  # As tcm_jax wrote them before it checksummed the JSON items (and keyed
  # the arrays by the word characters of their paths).
  states = {step: _random_state(step) for step in (1, 2)}
  with Checkpointer(str(tmp_path)) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state, data_state={'step': step}, config={})
  for step in ('1', '2'):
    _rewrite_json(_item_file(tmp_path / step, 'checksums'),
                  lambda sums: [sums.pop(k) for k in list(sums) if '#' in k])
  _rewrite_json(_item_file(tmp_path / '1', 'data_state'),
                lambda data_state: data_state.update(epoch=0))
  _flip_byte(tmp_path / '2')
  with Checkpointer(str(tmp_path)) as checkpointer:
    restored = checkpointer.restore_latest(_random_state(9))
  assert restored.step == 1
  _assert_trees_equal(restored.state, states[1])
  assert restored.data_state == {'step': 1, 'epoch': 0}


# --- The checks themselves ---------------------------------------------------


def test_a_bfloat16_nan_is_caught(tmp_path):
  good = {'w': jnp.ones(4, jnp.bfloat16)}
  bad = {'w': jnp.array([1, jnp.nan, 1, 1], jnp.bfloat16)}
  assert checkpoint_lib.verify_state(good, None) == 1
  with pytest.raises(checkpoint_lib.DamagedCheckpointError,
                     match='1 of 1 arrays hold NaN or infinite values: w'):
    checkpoint_lib.verify_state(bad, None)
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, good, data_state={}, config={})
    checkpointer.save(2, bad, data_state={}, config={})
    assert checkpointer.restore_latest(good).step == 1


def _restore_as_nested_dicts(step_dir):
  """The state item as Orbax reads it without a target, with the step's
  checksums item."""
  with ocp.StandardCheckpointer() as reader:
    state = reader.restore(epath.Path(step_dir) / 'state')
  with open(_item_file(step_dir, 'checksums')) as f:
    return state, json.load(f)


def test_leaf_keys_are_the_same_onto_a_target_and_as_nested_dicts(tmp_path):
  state = _train_state(3)
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, state, data_state={}, config={})
    restored = checkpointer.restore_latest(_train_state(5))  # verified
  _assert_trees_equal(restored.state, state)
  nested, checksums = _restore_as_nested_dicts(tmp_path / '1')
  assert isinstance(nested, dict) and isinstance(nested['params'], dict)
  assert checkpoint_lib.verify_state(nested, checksums) == len(
      jax.tree.leaves(state))
  assert (checkpoint_lib.state_checksums(nested)
          == checkpoint_lib.state_checksums(state))
  # The trainer's paths are keyed as before the keys were escaped, so
  # checksums saved then still verify.
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert [_checksums.leaf_key(p) for p in paths] == [
      _checksums._legacy_leaf_key(p) for p in paths]
  assert 'params/kernel/value' in checkpoint_lib.state_checksums(state)


def test_distinct_paths_have_distinct_checksums(tmp_path):
  rng = np.random.default_rng(0)
  # Each pair spelt the same by the word characters of its path.
  state = {'a/b': rng.normal(size=3), 'a': {'b': rng.normal(size=3)},
           'c-d': rng.normal(size=3), 'c': {'d': rng.normal(size=3)},
           'e': {'0': rng.normal(size=3), '[0]': rng.normal(size=3)}}
  sums = checkpoint_lib.state_checksums(state)
  assert len(sums) == 6
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, state, data_state={}, config={})
  nested, checksums = _restore_as_nested_dicts(tmp_path / '1')
  assert checkpoint_lib.verify_state(nested, checksums) == 6
  swapped = dict(nested, **{'a/b': nested['a']['b'], 'a': {'b': nested['a/b']}})
  with pytest.raises(checkpoint_lib.DamagedCheckpointError,
                     match='2 of 6 arrays differ'):
    checkpoint_lib.verify_state(swapped, checksums)


class _TwoNamesA:
  """A pytree node whose two children are both named 'a'."""


jax.tree_util.register_pytree_with_keys(
    _TwoNamesA,
    lambda node: (((jax.tree_util.DictKey('a'), np.zeros(1)),
                   (jax.tree_util.GetAttrKey('a'), np.ones(1))), None),
    lambda _, children: _TwoNamesA())


def test_two_leaves_at_one_key_are_refused_when_saved(tmp_path):
  with pytest.raises(ValueError, match=r"path of its own; received two leaves "
                     r"at 'x/a' \(the second at \['x'\]\.a\)"):
    checkpoint_lib.state_checksums({'x': _TwoNamesA()})
  with Checkpointer(str(tmp_path)) as checkpointer:
    with pytest.raises(ValueError, match='path of its own'):
      checkpointer.save(1, {'x': _TwoNamesA()}, data_state={}, config={})
    assert checkpointer.all_steps() == []


# --- Several processes: one step for all, every collective reached by all -----


def _two_processes(other, calls=None):
  """A gather as in a run of two processes, the other one's row `other(row)`
  (this one's row, as it arrives, for a process that agrees)."""

  def gather(row):
    if calls is not None:
      calls.append(list(row))
    row = np.asarray(row, np.int32)
    return np.stack([row, np.asarray(other(row), np.int32)])

  return gather


@pytest.mark.parametrize('other, agreed', [
    (lambda row: row, True),
    (lambda row: [row[0], 0], False),
])
def test_all_processes_must_read_a_step(other, agreed):
  gather = _two_processes(other)
  assert _agreement.all_read(4, True, '/ckpt', gather) is agreed
  assert _agreement.all_read(4, False, '/ckpt', gather) is False


@pytest.mark.parametrize('step, other_step', [(4, 3), (4, -1), (None, 2)])
def test_processes_at_different_steps_raise_together(step, other_step):
  gather = _two_processes(lambda row: [other_step, 1])
  mine = -1 if step is None else step
  with pytest.raises(RuntimeError, match=re.escape(
      f'see different checkpoints in /ckpt: the steps they try are '
      f'[{mine}, {other_step}]')):
    _agreement.all_read(step, True, '/ckpt', gather)


def test_one_process_gathers_without_a_collective(monkeypatch):
  monkeypatch.setattr(
      _agreement.multihost_utils, 'process_allgather',
      mock.Mock(side_effect=AssertionError('a collective in one process')))
  np.testing.assert_array_equal(_agreement.gather([3, 1]), [[3, 1]])


@_IGNORE_CLOSED_LOOP
def test_a_step_another_process_cannot_read_is_skipped_here_too(
    tmp_path, monkeypatch):
  states = {step: _random_state(step) for step in (1, 2, 3)}
  with Checkpointer(str(tmp_path), keep=5) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state, data_state={'step': step}, config={})
  # The other process cannot read step 3; it reads the others as this does.
  calls = []
  monkeypatch.setattr(_agreement, 'gather', _two_processes(
      lambda row: [row[0], 0] if row.size == 2 and row[0] == 3 else row,
      calls))
  with Checkpointer(str(tmp_path), keep=5) as checkpointer:
    with mock.patch.object(logging, 'warning') as mock_warning:
      restored = checkpointer.restore_latest(_random_state(9))
    assert restored.step == 2
    _assert_trees_equal(restored.state, states[2])
    assert any('step 3' in m and 'another process cannot read it' in m
               for m in _warnings(mock_warning)), _warnings(mock_warning)
    assert calls == [[3, 1], [2, 1]]
    # Skipped by all: retraining replaces it, on every process alike.
    assert checkpointer.save(3, states[1], data_state={'step': 3}, config={})
    assert calls[2:] == [[3, 3, 1], [1]]  # the save, the set-aside
  assert [name.split('-')[0] for name in
          os.listdir(f'{tmp_path}.unreadable')] == ['3']


def test_no_checkpoint_makes_one_agreement_call_in_restore_latest(
    tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(_agreement, 'gather',
                      _two_processes(lambda row: row, calls))
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.restore_latest({'w': jnp.ones(2)}) is None
  assert calls == [[-1, 1]]  # (and every process makes it)


def test_every_save_makes_one_agreement_call_whatever_it_does(
    tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(_agreement, 'gather',
                      _two_processes(lambda row: row, calls))
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.save(2, {'w': jnp.ones(2)}, data_state={}, config={})
    assert not checkpointer.save(2, {'w': jnp.ones(2)}, data_state={},
                                 config={})
    assert not checkpointer.save(1, {'w': jnp.ones(2)}, data_state={},
                                 config={})
  assert calls == [[2, -1, 0], [2, 2, 0], [1, 2, 0]]


def test_a_save_the_processes_disagree_on_is_refused(tmp_path, monkeypatch):
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(2, {'w': jnp.ones(2)}, data_state={}, config={})
    checkpointer.wait_until_finished()
    # The other process has no checkpoint of step 2.
    monkeypatch.setattr(_agreement, 'gather', _two_processes(
        lambda row: [row[0], -1, row[2]]))
    with pytest.raises(RuntimeError,
                       match=r'disagree on the save of step 4 .*\[\[4, 2, 0\], '
                       r'\[4, -1, 0\]\]'):
      checkpointer.save(4, {'w': jnp.ones(2)}, data_state={}, config={})
    assert checkpointer.all_steps() == [2]
