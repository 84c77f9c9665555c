"""Training throughput of every encoder: forward+backward images per second.

For each variant at its typical resolution this times one jitted training
step (`models.apply(train=True)`, the TCM loss on the embeddings, the gradient
with respect to every parameter) and, as the baseline measured in the same
run, the forward pass alone (eval mode); it prints images per second for both,
their ratio (about 3 is the textbook cost of a backward pass), the step's
FLOPs per image as XLA counts them in the compiled step (on the CPU backend), the FLOP rate, and
the model FLOPs utilisation where the device's peak is known (or given).

  python benchmarks/encoders.py                          # every variant, CPU sizes
  python benchmarks/encoders.py --variants resnet50@224 vit_b@224 \\
      --dtype bfloat16 --batch 128                       # the GPU/TPU check
  python benchmarks/encoders.py --variants resnet18@32 --peak_tflops 1.2

A variant is `name@pixels` (ViTs use patch 16 at 224 px and above, else 4;
ResNets below 64 px use the small-image stem).
"""

import argparse
import os
import statistics
import time

from flax import nnx
import jax
import jax.numpy as jnp

from _machine import cpu_name  # pylint: disable=g-bad-import-order
from tcm_jax import losses
from tcm_jax import models

# Dense peak TFLOP/s per chip, for bfloat16 (float32 in brackets where it differs
# and the device has no TF32 default), from the vendors' data sheets.
PEAK_TFLOPS = {
    'NVIDIA H100 80GB HBM3': 989.0, 'NVIDIA H100': 989.0, 'NVIDIA H200': 989.0,
    'NVIDIA A100-SXM4-80GB': 312.0, 'NVIDIA A100-SXM4-40GB': 312.0,
    'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5': 459.0, 'TPU v6 lite': 918.0,
}

DEFAULT_VARIANTS = ['resnet18@224', 'resnet34@224', 'resnet50@224',
                    'vit_ti@224', 'vit_s@224', 'vit_b@224',
                    'resnet18@32', 'resnet50@32', 'vit_ti@32', 'vit_s@32']


def encoder_config(variant, dtype):
  name, pixels = variant.split('@')
  pixels = int(pixels)
  config = {'name': name, 'dtype': dtype}
  if name.startswith('vit'):
    config.update(image_size=pixels, patch_size=16 if pixels >= 224 else 4)
  elif pixels < 64:
    config.update(small_images=True)
  return config, pixels


def seconds_per_step(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - start)
  return statistics.median(samples)


def xla_flops(fn, *args):
  """XLA's FLOP count of jitted `fn` on `args` (counted on the CPU backend).

  The CPU count covers every operation; on GPU the compiled program's count
  leaves out the convolutions and matmuls handed to cuDNN and cuBLAS (0.41
  GFLOP per ResNet-50 training image at 224 px on an H100 against 23.7 on the
  CPU), and the pre-compilation count is empty there (jax 0.11.2). So on an
  accelerator the same program is compiled once more, for the CPU, to count.
  """
  if jax.default_backend() != 'cpu':
    args = jax.device_put(args, jax.devices('cpu')[0])
  analysis = fn.lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0]
  return float((analysis or {}).get('flops', float('nan')))


def measure(variant, *, batch, dtype, repeats, peak_tflops):
  config, pixels = encoder_config(variant, dtype)
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  graphdef, params, state = models.split(encoder)
  images = jax.random.normal(jax.random.key(0), (batch, pixels, pixels, 3))
  labels = jnp.arange(batch) // 4

  def loss_fn(params, state, images):
    z, state = models.apply(graphdef, params, state, images, train=True)
    return losses.tcm_loss_from_embeddings(z, labels), state

  train_step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  forward = jax.jit(lambda p, s, x: models.apply(graphdef, p, s, x)[0])
  args = (params, state, images)
  train_s = seconds_per_step(train_step, args, repeats)
  forward_s = seconds_per_step(forward, args, repeats)
  flops = xla_flops(train_step, *args)
  tflops = flops / train_s / 1e12
  mfu = tflops / peak_tflops if peak_tflops else float('nan')
  return dict(variant=variant, batch=batch, train=batch / train_s,
              forward=batch / forward_s, ratio=train_s / forward_s,
              gflop=flops / batch / 1e9, tflops=tflops, mfu=mfu)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS)
  parser.add_argument('--batch', type=int, default=None,
                      help='default: 8 at 224 px, 64 below, on CPU; 128 / 256 '
                           'on accelerators')
  parser.add_argument('--dtype', default=None,
                      help='compute dtype; default float32 on CPU, bfloat16 '
                           'elsewhere')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='the device peak for MFU (default: from a table of '
                           'GPUs and TPUs)')
  args = parser.parse_args()

  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  dtype = args.dtype or ('float32' if on_cpu else 'bfloat16')
  peak = args.peak_tflops or PEAK_TFLOPS.get(device.device_kind)
  machine = (f'{cpu_name()} ({os.cpu_count()} cores)' if on_cpu else
             f'{jax.local_device_count()} x {device.device_kind}')
  print(f'jax {jax.__version__}, {machine}, compute {dtype}, '
        f'median of {args.repeats}; peak {peak or "unknown"} TFLOP/s')
  print(f'{"variant":<14} {"batch":>5} {"train img/s":>11} {"fwd img/s":>9} '
        f'{"ratio":>6} {"GFLOP/img":>9} {"TFLOP/s":>8} {"MFU":>6}')
  for variant in args.variants:
    pixels = int(variant.split('@')[1])
    batch = args.batch or (
        (8 if pixels >= 224 else 64) if on_cpu else (128 if pixels >= 224 else 256))
    r = measure(variant, batch=batch, dtype=dtype, repeats=args.repeats,
                peak_tflops=peak)
    mfu = f'{100 * r["mfu"]:5.1f}%' if peak else '     -'
    print(f'{r["variant"]:<14} {r["batch"]:>5} {r["train"]:>11.1f} '
          f'{r["forward"]:>9.1f} {r["ratio"]:>6.2f} {r["gflop"]:>9.2f} '
          f'{r["tflops"]:>8.3f} {mfu:>6}', flush=True)


if __name__ == '__main__':
  main()
