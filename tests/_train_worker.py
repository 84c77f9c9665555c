"""A tiny training run in a process of its own, for the resume and multi-host
tests (tests/test_resume_and_multihost.py).

  python tests/_train_worker.py '<json spec>'

The spec (a JSON object) says:
  workdir: the run's folder (resumed from if it holds checkpoints);
  devices: CPU devices of this process;
  num_steps, checkpoint_every: the run's length and checkpoint interval;
  out: a folder for what the test reads back: `state_<process>_<step>.npz`
    (every leaf of the train state at each step of `dump_steps`),
    `steps_<process>.json` (the steps the callbacks saw) and
    `final_<process>.json` (the metrics `train_and_evaluate` returned);
  dump_steps: the steps whose state is dumped;
  cache_dir: optional; JAX's persistent compilation cache;
  kill_at, kill_after_checkpoint: optional; at step `kill_at` wait until the
    checkpoint of step `kill_after_checkpoint` is on disk (Orbax's rename from
    its temporary name), then SIGKILL this process;
  coordinator, num_processes, process_id: optional; a multi-process run,
    `jax.distributed.initialize` over localhost with gloo CPU collectives;
  unreadable: optional; `{process id: [steps]}`: the checkpoints of these
    steps fail their checks when this process restores them (as when one
    host reads damaged bytes that the others do not).

JAX is configured before anything uses it, so this must run as its own
process (the pytest process has its eight devices already).
"""

import json
import os
import signal
import sys
import time


def tiny_config(num_steps, checkpoint_every):
  """configs/digits.py made small: 16-image batches, a thin ResNet, no bar."""
  from configs import digits  # pylint: disable=import-outside-toplevel
  from tcm_jax import models  # pylint: disable=import-outside-toplevel
  config = digits.get_config()
  config.model = models.encoder_config(
      'resnet18', width=0.25, small_images=True, embedding_size=16)
  # 4 x 4 = 16 images: divides over 1, 2, 4 and 8 devices.
  config.input.classes_per_batch = 4
  config.input.samples_per_class = 4
  config.input.eval_batch_size = 32
  config.input.num_threads = 1
  config.eval.ks = (1,)
  config.eval.baselines = False  # tested in test_train_glyphs.py
  # SGD with small steps, not digits' Adam: Adam divides each gradient by its
  # own magnitude, so the rounding of a near-zero gradient (which the device
  # topology changes) moves its weight by a whole learning rate, and
  # Smooth-AP's sharp sigmoid grows any difference from step to step. With
  # these, 2 x 2 and 1 x 4 devices stay within 2e-6 over six steps.
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.train.num_steps = num_steps
  config.train.checkpoint_every_steps = checkpoint_every
  config.train.log_every_steps = 1
  config.train.eval_every_steps = 0
  config.train.progress_bar = False
  return config


def _flat_state(state, to_host):
  """Every leaf of the train state, keyed by its path, as NumPy."""
  import jax  # pylint: disable=import-outside-toplevel
  leaves = {}
  for part in ('step', 'params', 'model_state', 'opt_state'):
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        getattr(state, part))[0]:
      leaves[part + jax.tree_util.keystr(path)] = to_host(leaf)
  return leaves


def _fail_restores(steps):
  """Makes the checkpoints of `steps` fail their checks in this process,
  once read (every process reads them: Orbax's restore ends in a barrier)."""
  # pylint: disable=import-outside-toplevel,protected-access
  from tcm_jax import checkpoint
  read_step = checkpoint._read_step

  def failing(manager, step, items):
    restored = read_step(manager, step, items)
    if step in steps and 'state' in items:
      raise checkpoint.DamagedCheckpointError(
          f'step {step} fails its checks in this process (the test says so)')
    return restored

  checkpoint._read_step = failing


def main(spec):
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', spec['devices'])
  if 'cache_dir' in spec:
    # Compiled programs shared between the workers of a test session: each
    # run then compiles only what no run before it did.
    jax.config.update('jax_compilation_cache_dir', spec['cache_dir'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  if 'coordinator' in spec:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(spec['coordinator'],
                               num_processes=spec['num_processes'],
                               process_id=spec['process_id'],
                               initialization_timeout=120)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tcm_jax import parallel  # pylint: disable=import-outside-toplevel
  from tcm_jax import train  # pylint: disable=import-outside-toplevel

  out, rank = spec['out'], jax.process_index()
  os.makedirs(out, exist_ok=True)
  seen = []
  checkpoint_dir = os.path.join(spec['workdir'], 'checkpoints')

  def callback(step, state):
    seen.append(step)
    with open(os.path.join(out, f'steps_{rank}.json'), 'w') as f:
      json.dump(seen, f)
    if step in spec.get('dump_steps', ()):
      np.savez(os.path.join(out, f'state_{rank}_{step}.npz'),
               **_flat_state(state, parallel.to_host))
    if step == spec.get('kill_at'):
      # Orbax writes into `<step>.orbax-checkpoint-tmp*` and renames it to
      # `<step>` once every item is written: the checkpoint is then complete.
      finished = os.path.join(checkpoint_dir,
                              str(spec['kill_after_checkpoint']))
      deadline = time.monotonic() + 120
      while not os.path.isdir(finished):
        if time.monotonic() > deadline:
          raise TimeoutError(f'{finished} never appeared.')
        time.sleep(0.01)
      os.kill(os.getpid(), signal.SIGKILL)

  unreadable = spec.get('unreadable', {}).get(str(rank), ())
  if unreadable:
    _fail_restores(unreadable)
  config = tiny_config(spec['num_steps'], spec['checkpoint_every'])
  final = train.train_and_evaluate(config, spec['workdir'],
                                   callbacks=[callback])
  with open(os.path.join(out, f'final_{rank}.json'), 'w') as f:
    json.dump(final, f)


if __name__ == '__main__':
  # The repository root, for `configs` (tcm_jax itself is installed).
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main(json.loads(sys.argv[1]))
