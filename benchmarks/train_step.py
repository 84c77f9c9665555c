"""The cost of TCM in a training step: the trainer's step with and without it.

For each model this builds the trainer's own data-parallel step
(`train.create_training`: forward, base loss + TCM through
`Objective.sharded`, backward, optimizer update) from its config twice, with
`loss.tcm.enabled` True and False, and times both on the same synthetic
batches, made on the device up front so that no input loading is timed. The
compile and two warm-up steps are excluded; the two steps are timed in
alternation (ABBA, to cancel drift), each sample running enough steps to last
`--min_sample_seconds`. It prints the median step time of each; the overhead
of TCM (target: under 3%) as the median ratio of samples taken back to back,
with the ratios' interquartile range; the FLOPs TCM adds to the compiled step
(XLA's count, which machine load cannot blur); images per second with TCM; and
the model FLOPs utilisation (XLA's count for the compiled step over the
device's peak, from encoders.py's table or `--peak_tflops`). On GPU the
compiled count leaves out the cuDNN and cuBLAS calls, so the FLOPs and MFU
columns print '-' there: encoders.py counts the model's FLOPs on the CPU.

  python benchmarks/train_step.py                       # CPU: small inputs
  python benchmarks/train_step.py --models resnet50 vit_b16  # GPU: 224 px

Models: `digits` (configs/digits.py as it is: batch 80 of 16 px) and the
paper's backbones from configs/synthetic.py, `resnet50` and `vit_b16`. On CPU
these run at 64 px in float32 (batch 32 and 16); on accelerators at 224 px in
bfloat16 with batch 128 per device over every device. Flags override each.
"""

import argparse
import math
import os
import statistics
import time

import jax
import numpy as np

from _machine import cpu_name  # pylint: disable=g-bad-import-order
from encoders import PEAK_TFLOPS  # pylint: disable=g-bad-import-order
from tcm_jax import config as config_lib
from tcm_jax import parallel
from tcm_jax import train

OVERHEAD_TARGET = 0.03
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                       'configs')
# Config file and argument of each model, and its (pixels, batch) on CPU.
MODELS = {'digits': ('digits', ()), 'resnet50': ('synthetic', ('resnet50',)),
          'vit_b16': ('synthetic', ('vit_b16',))}
CPU_SIZES = {'resnet50': (64, 32), 'vit_b16': (64, 16)}


def load_config(model):
  file, args = MODELS[model]
  return config_lib.load_config(
      os.path.join(CONFIGS, f'{file}.py') + ''.join(f':{a}' for a in args))


def model_config(model, *, pixels, batch, dtype):
  """The model's config at the benchmark's size; None keeps the config's."""
  config = load_config(model)
  if pixels:
    config.input.image_size = pixels
    if 'image_size' in config.model:  # ViTs are built for one size
      config.model.image_size = pixels
  if batch:
    config.input.classes_per_batch = batch // config.input.samples_per_class
  if dtype:
    config.model.dtype = dtype
  config_lib.check_config(config)
  return config


def make_step(config, mesh, batch):
  """The trainer's compiled step, a fresh state on `mesh`, and the step's
  FLOPs (XLA's count of the program `batch` runs)."""
  state, step, _ = train.create_training(
      config, num_classes=config.input.classes_per_batch,
      steps_per_epoch=100, mesh=mesh)
  return step, state, compiled_flops(step.lower(state, batch).compile())


def synthetic_batches(config, mesh, count=4):
  """`count` class-balanced batches of random images, already on the mesh."""
  i = config.input
  size = i.classes_per_batch * i.samples_per_class
  rng = np.random.default_rng(0)
  shape = (size, i.image_size, i.image_size, config.model.in_channels)
  return [parallel.shard_batch(
      {'image': rng.normal(size=shape).astype(np.float32),
       'label': (np.arange(size) // i.samples_per_class).astype(np.int32)},
      mesh) for _ in range(count)]


def compiled_flops(compiled):
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0]
  return float((analysis or {}).get('flops', float('nan')))


class Runner:
  """A compiled step with its own state, run `n` steps at a time."""

  def __init__(self, step, state, batches):
    self.step, self.state, self.batches, self.i = step, state, batches, 0

  def seconds_per_step(self, n):
    start = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.step(
          self.state, self.batches[self.i % len(self.batches)])
      self.i += 1
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / n


def measure(config, mesh, *, repeats, min_sample_seconds):
  """Times the step without and with TCM in alternation.

  Returns:
    The median seconds per step of each, the per-repeat ratios (with /
    without), the FLOPs per device of each step, and the steps per sample.
  """
  batches = synthetic_batches(config, mesh)
  runners, flops = [], []
  for enabled in (False, True):
    config.loss.tcm.enabled = enabled
    step, state, step_flops = make_step(config, mesh, batches[0])
    flops.append(step_flops)
    runners.append(Runner(step, state, batches))
  calls = []
  for runner in runners:
    runner.seconds_per_step(2)  # warm-up
    once = runner.seconds_per_step(2)
    calls.append(math.ceil(min_sample_seconds / once))
  samples = [[], []]
  for r in range(repeats):
    for k in ((0, 1) if r % 2 == 0 else (1, 0)):
      samples[k].append(runners[k].seconds_per_step(calls[k]))
  ratios = [tcm / base for base, tcm in zip(*samples)]
  return [statistics.median(s) for s in samples], ratios, flops, calls[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', nargs='+', default=list(MODELS),
                      choices=list(MODELS))
  parser.add_argument('--pixels', type=int, default=None,
                      help='input size of resnet50 / vit_b16; default 64 on '
                           'CPU, 224 elsewhere (digits keeps its 16)')
  parser.add_argument('--batch', type=int, default=None,
                      help='global batch; default 32 / 16 on CPU, 128 per '
                           'device elsewhere (digits keeps its 80)')
  parser.add_argument('--dtype', default=None,
                      help='compute dtype; default float32 on CPU, bfloat16 '
                           'elsewhere')
  parser.add_argument('--repeats', type=int, default=11,
                      help='alternated samples of each step')
  parser.add_argument('--min_sample_seconds', type=float, default=2.0)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='per-device peak for MFU (default: from the table '
                           'in encoders.py)')
  args = parser.parse_args()

  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  mesh = parallel.data_mesh(jax.devices()[:1] if on_cpu else jax.devices())
  dtype = args.dtype or ('float32' if on_cpu else 'bfloat16')
  peak = args.peak_tflops or PEAK_TFLOPS.get(device.device_kind)
  machine = (f'{cpu_name()} ({os.cpu_count()} cores)' if on_cpu else
             f'{mesh.size} x {device.device_kind}')
  print(f'jax {jax.__version__}, {machine}, {mesh.size} device(s), compute '
        f'{dtype}, median of {args.repeats} alternated samples; peak '
        f'{peak or "unknown"} TFLOP/s per device')
  print(f'{"model":<9} {"input":>6} {"batch":>5} {"no TCM ms":>9} '
        f'{"TCM ms":>9} {"overhead":>8} {"IQR":>6} {"FLOPs":>6} {"img/s":>7} '
        f'{"MFU":>6}  verdict')
  ok = True
  for model in args.models:
    pixels, batch = None, args.batch
    if model != 'digits':
      cpu_pixels, cpu_batch = CPU_SIZES[model]
      pixels = args.pixels or (cpu_pixels if on_cpu else 224)
      batch = batch or (cpu_batch if on_cpu else 128 * mesh.size)
    config = model_config(model, pixels=pixels, batch=batch, dtype=dtype)
    start = time.perf_counter()
    (base, tcm), ratios, (base_flops, flops), calls = measure(
        config, mesh, repeats=args.repeats,
        min_sample_seconds=args.min_sample_seconds)
    # Each ratio pairs two samples taken back to back, so load from elsewhere
    # on the machine mostly cancels in it; the IQR says how much did not.
    overhead = statistics.median(ratios) - 1
    quartiles = statistics.quantiles(ratios, n=4)
    passed = overhead < OVERHEAD_TARGET
    ok &= passed
    size = config.input.classes_per_batch * config.input.samples_per_class
    # XLA counts the per-device program; compare it with one device's peak.
    # On GPU the count misses the library calls (see the docstring).
    counted = device.platform != 'gpu'
    mfu = (f'{100 * flops / tcm / 1e12 / peak:5.1f}%' if peak and counted
           else '     -')
    added = f'{100 * (flops / base_flops - 1):>+5.2f}%' if counted else '-'
    print(f'{model:<9} {config.input.image_size:>4}px {size:>5} '
          f'{1e3 * base:>9.1f} {1e3 * tcm:>9.1f} {100 * overhead:>7.1f}% '
          f'{100 * (quartiles[2] - quartiles[0]):>5.1f}% '
          f'{added:>6} {size / tcm:>7.1f} '
          f'{mfu:>6}  {"PASS" if passed else "MISS"}  ({calls} steps/sample, '
          f'{time.perf_counter() - start:.0f} s)', flush=True)
  print(f'target: TCM adds under {100 * OVERHEAD_TARGET:.0f}% to a step: '
        f'{"all met" if ok else "MISSED"}')


if __name__ == '__main__':
  main()
