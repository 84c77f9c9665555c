"""Whole training runs in subprocesses: SIGKILL and resume, a damaged
checkpoint, two processes against one.

Each run is `tests/_train_worker.py` in a process of its own, so that it can be
killed and can have its own devices (this process has eight). The runs share
one tiny config (`_train_worker.tiny_config`) and JAX's persistent compilation
cache, so a program is compiled by the first run that needs it only. The
uninterrupted single-process run on four devices is the reference of every
test: `N` steps, a checkpoint, `N` more steps, a checkpoint.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      '_train_worker.py')
N = 3            # the checkpoint interval; the reference trains 2 N steps
DEVICES = 4
TIMEOUT_S = 240  # per run: a hung collective fails the test, not CI


def _environment():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # the worker sets its own device count
  return env


def _spec(workdir, out, cache_dir, *, num_steps=2 * N, dump_steps=(),
          **extra):
  return dict(workdir=str(workdir), out=str(out), cache_dir=str(cache_dir),
              devices=DEVICES, num_steps=num_steps, checkpoint_every=N,
              dump_steps=list(dump_steps), **extra)


def _run(spec, returncode=0):
  """Runs the worker to its end; its stderr (the absl log)."""
  run = subprocess.run([sys.executable, WORKER, json.dumps(spec)],
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       env=_environment(), check=False)
  assert run.returncode == returncode, (
      f'worker exited with {run.returncode}, expected {returncode}; its '
      f'output ends:\n{(run.stdout + run.stderr)[-5000:]}')
  return run.stderr


def _dump(out, step, process=0):
  with np.load(os.path.join(out, f'state_{process}_{step}.npz')) as data:
    return {key: data[key] for key in data.files}


def _seen_steps(out, process=0):
  with open(os.path.join(out, f'steps_{process}.json')) as f:
    return json.load(f)


def _final_metrics(out, process=0):
  with open(os.path.join(out, f'final_{process}.json')) as f:
    return json.load(f)


def _logged(workdir):
  """`(kind, step)` of each line of the run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(line['kind'], line['step']) for line in map(json.loads, f)]


def _complete_run_log(num_steps):
  return ([('train', s) for s in range(1, num_steps + 1)]
          + [('eval', num_steps)])


def _assert_bitwise_equal(actual, expected):
  assert actual.keys() == expected.keys()
  differ = [key for key in expected
            if actual[key].dtype != expected[key].dtype
            or not np.array_equal(actual[key], expected[key])]
  assert not differ, (
      f'{len(differ)} of {len(expected)} leaves differ: {differ[:5]}')


def _leaf_id(key):
  """A leaf's path as its names: the dumps' and Orbax's spellings agree."""
  return tuple(re.findall(r'\w+', key))


def _restore(step_dir):
  """The train state saved in a checkpoint step, keyed as the dumps are.

  Read onto one device of this process, whatever topology wrote it; raises
  if the checkpoint cannot be read.
  """
  path = os.path.join(step_dir, 'state')
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
        checkpointer.metadata(path).item_metadata)
    state = checkpointer.restore(path, target)
  return {_leaf_id(jax.tree_util.keystr(key)): np.asarray(leaf)
          for key, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _by_leaf_id(dump):
  return {_leaf_id(key): value for key, value in dump.items()}


def _truncate_files(directory):
  """Cuts every file under `directory` to half its length: a damaged disk."""
  count = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
      count += 1
  assert count, f'no files under {directory}'


def _warned(log, message):
  """Whether absl logged `message` at WARNING (either of its line formats)."""
  return re.search(rf'^(WARNING:|W\d{{4}} ).*{re.escape(message)}', log,
                   re.MULTILINE) is not None


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache_dir):
  """The uninterrupted run: 2 N steps on four devices of one process."""
  root = tmp_path_factory.mktemp('reference')
  workdir, out = root / 'run', root / 'out'
  _run(_spec(workdir, out, cache_dir, dump_steps=(1, N, 2 * N)))
  return workdir, out


@pytest.mark.slow
def test_run_killed_after_step_n_resumes_to_the_same_state(reference,
                                                           tmp_path, cache_dir):
  ref_workdir, ref_out = reference
  workdir = tmp_path / 'run'
  # Killed at step N + 2, once the checkpoint of step N is on disk: the train
  # line of step N + 1 is logged by then, and must not appear twice.
  _run(_spec(workdir, tmp_path / 'killed', cache_dir, kill_at=N + 2,
             kill_after_checkpoint=N), returncode=-signal.SIGKILL)
  assert _seen_steps(tmp_path / 'killed') == list(range(1, N + 3))
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(N)]
  logged = _logged(workdir)
  assert logged[:N + 1] == [('train', s) for s in range(1, N + 2)], logged

  log = _run(_spec(workdir, tmp_path / 'resumed', cache_dir,
                   dump_steps=(2 * N,)))
  assert f'Resumed from step {N} in {workdir}' in log
  assert _seen_steps(tmp_path / 'resumed') == list(range(N + 1, 2 * N + 1))
  # Bitwise: same devices, same programs, the same batches from step N on.
  final_state = _dump(ref_out, 2 * N)
  _assert_bitwise_equal(_dump(tmp_path / 'resumed', 2 * N), final_state)
  assert any(not np.array_equal(final_state[key], value)
             for key, value in _dump(ref_out, N).items()), (
                 'the state did not change between steps N and 2 N, so the '
                 'comparison could not tell a run that trained them from one '
                 'that skipped them')
  assert _final_metrics(tmp_path / 'resumed') == _final_metrics(ref_out)
  assert _logged(workdir) == _logged(ref_workdir) == _complete_run_log(2 * N)


@pytest.mark.slow
def test_unreadable_latest_checkpoint_is_skipped_with_a_warning(
    reference, tmp_path, cache_dir):
  ref_workdir, ref_out = reference
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  _truncate_files(workdir / 'checkpoints' / str(2 * N) / 'state')

  log = _run(_spec(workdir, tmp_path / 'out', cache_dir, num_steps=3 * N,
                   dump_steps=(2 * N,)))
  assert _warned(log, f'Cannot read the checkpoint at step {2 * N} in '
                 f'{workdir / "checkpoints"}'), log[-5000:]
  assert _warned(log, f'Resuming from step {N} with a config that differs '
                 'in: train.num_steps'), log[-5000:]
  assert f'Resumed from step {N} in {workdir}' in log
  assert _seen_steps(tmp_path / 'out') == list(range(N + 1, 3 * N + 1))
  _assert_bitwise_equal(_dump(tmp_path / 'out', 2 * N), _dump(ref_out, 2 * N))
  assert _logged(workdir) == _complete_run_log(3 * N)
  assert os.path.isfile(workdir / 'report.md')
  # The damaged step is kept (it may be worth repairing) and the run's end
  # is saved past it.
  assert sorted(map(int, os.listdir(workdir / 'checkpoints'))) == [
      N, 2 * N, 3 * N]
  assert _restore(workdir / 'checkpoints' / str(3 * N))[('step',)] == 3 * N


@pytest.mark.slow
def test_rerun_replaces_an_unreadable_final_checkpoint(reference, tmp_path,
                                                       cache_dir):
  ref_workdir, ref_out = reference
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  _truncate_files(workdir / 'checkpoints' / str(2 * N) / 'state')

  log = _run(_spec(workdir, tmp_path / 'out', cache_dir, dump_steps=(2 * N,)))
  assert f'Resumed from step {N} in {workdir}' in log
  final_state = _dump(ref_out, 2 * N)
  _assert_bitwise_equal(_dump(tmp_path / 'out', 2 * N), final_state)
  restored = _restore(workdir / 'checkpoints' / str(2 * N))
  _assert_bitwise_equal(restored, _by_leaf_id(final_state))
  # The damaged checkpoint is set aside, not deleted.
  aside = os.listdir(workdir / 'checkpoints.unreadable')
  assert [name.split('-')[0] for name in aside] == [str(2 * N)], aside


def _flip_one_byte(directory):
  """Flips one bit in the middle of the largest array data file under
  `directory` (TensorStore's OCDBT keeps array bytes under `d/`): damage
  that keeps every file's size, which Orbax alone would read back."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(directory)
           for name in names if os.path.basename(root) == 'd']
  path = max(paths, key=os.path.getsize)
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    byte = f.read(1)[0]
    f.seek(size // 2)
    f.write(bytes([byte ^ 0x01]))
  assert os.path.getsize(path) == size


@pytest.mark.slow
def test_a_flipped_bit_in_the_latest_checkpoint_is_caught_and_retrained(
    reference, tmp_path, cache_dir):
  ref_workdir, ref_out = reference
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  _flip_one_byte(workdir / 'checkpoints' / str(2 * N) / 'state')

  log = _run(_spec(workdir, tmp_path / 'out', cache_dir, dump_steps=(2 * N,)))
  assert _warned(log, f'Cannot read the checkpoint at step {2 * N} in '
                 f'{workdir / "checkpoints"} (DamagedCheckpointError: 1 of '), (
                     log[-5000:])
  assert 'differ from their checksums at save time' in log
  assert f'Resumed from step {N} in {workdir}' in log
  assert _seen_steps(tmp_path / 'out') == list(range(N + 1, 2 * N + 1))
  # Retrained from step N: bit for bit the uninterrupted run's state, saved
  # again in place of the damaged one, which is set aside.
  final_state = _dump(ref_out, 2 * N)
  _assert_bitwise_equal(_dump(tmp_path / 'out', 2 * N), final_state)
  _assert_bitwise_equal(_restore(workdir / 'checkpoints' / str(2 * N)),
                        _by_leaf_id(final_state))
  aside = os.listdir(workdir / 'checkpoints.unreadable')
  assert [name.split('-')[0] for name in aside] == [str(2 * N)], aside
  assert _final_metrics(tmp_path / 'out') == _final_metrics(ref_out)
  assert _logged(workdir) == _complete_run_log(2 * N)


def _run_two_processes(workdir, out, cache_dir, logs_dir, **extra):
  """Runs the worker as the two processes of one run, to their end; the
  log of each (its absl log and output)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes, logs = [], []
  try:
    for i in range(2):
      spec = _spec(workdir, out, cache_dir, coordinator=f'127.0.0.1:{port}',
                   num_processes=2, process_id=i, **extra)
      spec['devices'] = DEVICES // 2
      # To files, not pipes: a process blocked on a full pipe would stall
      # the other's collectives.
      logs.append(logs_dir / f'process_{i}.log')
      with open(logs[-1], 'w') as log_file:
        processes.append(subprocess.Popen(
            [sys.executable, WORKER, json.dumps(spec)], stdout=log_file,
            stderr=subprocess.STDOUT, env=_environment()))
    deadline = time.monotonic() + TIMEOUT_S
    for process in processes:
      process.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, log in zip(processes, logs):
    assert process.returncode == 0, (
        f'{log.name} exited with {process.returncode}:\n'
        f'{log.read_text()[-5000:]}')
  return [log.read_text() for log in logs]


@pytest.mark.slow
def test_two_processes_agree_with_one_process_on_as_many_devices(
    reference, tmp_path, cache_dir):
  ref_workdir, ref_out = reference
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  _run_two_processes(workdir, out, cache_dir, tmp_path,
                     dump_steps=(1, 2 * N))

  for step in (1, 2 * N):
    _assert_bitwise_equal(_dump(out, step, process=1), _dump(out, step))
  assert _final_metrics(out, process=1) == _final_metrics(out)

  # Against one process: the same global batches over the same number of
  # devices, the psums now across processes (gloo), so equal to rounding.
  # After one step, every leaf, the gradients (SGD's trace) included.
  first, ref_first = _dump(out, 1), _dump(ref_out, 1)
  for key, value in ref_first.items():
    error = (np.linalg.norm(first[key] - value)
             / max(np.linalg.norm(value), np.finfo(np.float32).tiny))
    assert error <= 1e-4, f'{key}: relative error {error:.3g} after step 1'
  # After 2 N steps, the weights and BatchNorm statistics, to 3e-5 (the
  # steps from N to 2 N alone move them by 1e-2). Not SGD's momentum:
  # Smooth-AP's sharp sigmoid makes the gradients of step 2 N differ by up to
  # 1% (so do one process's on 2 devices and on 4).
  last, ref_last = _dump(out, 2 * N), _dump(ref_out, 2 * N)
  assert last['step'] == ref_last['step'] == 2 * N
  for key, value in ref_last.items():
    if not key.startswith('opt_state'):
      np.testing.assert_allclose(last[key], value, rtol=0, atol=3e-5,
                                 err_msg=key)
  final, ref_final = _final_metrics(out), _final_metrics(ref_out)
  assert final.keys() == ref_final.keys()
  # A weight's last digit can swap a query's two nearly tied neighbours:
  # Recall@1 may move by one query in the 896 (1.1e-3), no more than two.
  for key, value in ref_final.items():
    tolerance = dict(abs=2.5e-3) if key == 'recall_at_1' else dict(rel=1e-3)
    assert final[key] == pytest.approx(value, **tolerance), key

  # Process 0 alone writes the logs and the report; Orbax wrote one set of
  # checkpoints from both processes, which reads back as their state.
  assert _logged(workdir) == _complete_run_log(2 * N)
  assert os.path.isfile(workdir / 'report.md')
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(N), str(2 * N)]
  _assert_bitwise_equal(_restore(workdir / 'checkpoints' / str(2 * N)),
                        _by_leaf_id(last))


@pytest.mark.slow
def test_a_checkpoint_one_process_cannot_read_is_skipped_by_both(
    reference, tmp_path, cache_dir):
  ref_workdir, _ = reference
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  shutil.copytree(ref_workdir, workdir)
  # Process 1 alone finds step 2 N damaged: both resume from step N (alone,
  # process 0 would take step 2 N for a finished run, and the two would
  # wait on each other's collectives).
  logs = _run_two_processes(workdir, out, cache_dir, tmp_path,
                            dump_steps=(2 * N,), unreadable={'1': [2 * N]})
  assert _warned(logs[0], f'Cannot read the checkpoint at step {2 * N} in '
                 f'{workdir / "checkpoints"} (another process cannot read '
                 'it)'), logs[0][-5000:]
  assert _warned(logs[1], f'Cannot read the checkpoint at step {2 * N} in '
                 f'{workdir / "checkpoints"} (DamagedCheckpointError: step '
                 f'{2 * N} fails its checks in this process'), logs[1][-5000:]
  for process, log in enumerate(logs):
    assert f'Resumed from step {N} in {workdir}' in log
    assert _seen_steps(out, process) == list(range(N + 1, 2 * N + 1))
  _assert_bitwise_equal(_dump(out, 2 * N, process=1), _dump(out, 2 * N))
  # Retrained, saved again, the checkpoint both skipped set aside once.
  aside = os.listdir(workdir / 'checkpoints.unreadable')
  assert [name.split('-')[0] for name in aside] == [str(2 * N)], aside
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(N), str(2 * N)]
  assert _restore(workdir / 'checkpoints' / str(2 * N))[('step',)] == 2 * N
  assert _logged(workdir) == _complete_run_log(2 * N)
