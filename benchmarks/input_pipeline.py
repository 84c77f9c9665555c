"""Training-batch throughput of the input pipeline: 224 px batches from JPEG records.

Synthetic JPEG-encoded records (352 px originals, encoded once up front, so that
decoding and the random resized crop do real work) go through the training
pipeline: decode, random resized crop to 224, flip, normalise, P x K batches.
It times `TrainBatches` with 1 and 2 threads and with 1 and 2 worker
processes against, as the baseline measured in the same run, the same work in
a plain Python loop, and prints images per second and the ratio.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --batches 20 --classes 8 --samples 8
"""

import argparse
import os
import time

import numpy as np

from _machine import cpu_name  # pylint: disable=g-bad-import-order
from tcm_jax.data import datasets
from tcm_jax.data import pipeline
from tcm_jax.data import transforms
from tcm_jax.data.sampler import ClassBalancedSampler


def loop_images_per_second(split, sampler, transform, steps):
  warm_up, steps = 2, steps + 2
  for step in range(steps):
    if step == warm_up:
      start = time.perf_counter()
    rows = sampler.process_batch(step)
    images = [transform(split.image(int(i)),
                        np.random.default_rng([0, 2, step, row]))
              for row, i in enumerate(rows)]
    np.stack(images)
  return (steps - warm_up) * sampler.batch_size / (time.perf_counter() - start)


def pipeline_images_per_second(split, sampler, transform, steps, options):
  batches = pipeline.TrainBatches(split, sampler, transform, options=options)
  # Start the threads / workers. The buffer they then fill ahead (`prefetch`
  # batches) counts in the timed batches: a bias of about prefetch / batches.
  for _ in range(2):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * sampler.batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--classes', type=int, default=16, help='P')
  parser.add_argument('--samples', type=int, default=4, help='K')
  parser.add_argument('--image_size', type=int, default=352,
                      help='side of the JPEG originals')
  args = parser.parse_args()

  generated = datasets.load_split('synthetic', 'train', synthetic={
      'num_classes': 2 * args.classes, 'images_per_class': 2 * args.samples,
      'image_size': args.image_size, 'jpeg': True})
  # Encoded once, up front: the pipeline then only reads, decodes, transforms.
  records = [generated._records[int(p)] for p in generated._positions]  # pylint: disable=protected-access
  split = datasets.Split('jpeg', generated.labels, records,
                         np.arange(len(records)), datasets.record_image)
  sampler = ClassBalancedSampler(split.labels, classes_per_batch=args.classes,
                                 samples_per_class=args.samples)
  transform = transforms.TrainTransform(size=224)
  print(f'{cpu_name()} ({os.cpu_count()} cores); {args.image_size} px JPEG '
        f'records -> 224 px, batch {sampler.batch_size}, {args.batches} '
        'batches after 2 warm-up batches')
  baseline = loop_images_per_second(split, sampler, transform, args.batches)
  print(f'{"configuration":<28} {"images/s":>9} {"vs loop":>8}')
  print(f'{"plain Python loop":<28} {baseline:>9.1f} {1.0:>8.2f}')
  for label, options in [
      ('1 thread', pipeline.LoaderOptions(num_threads=1)),
      ('2 threads', pipeline.LoaderOptions(num_threads=2)),
      ('1 worker process', pipeline.LoaderOptions(num_threads=1,
                                                  worker_count=1)),
      ('2 worker processes', pipeline.LoaderOptions(num_threads=1,
                                                    worker_count=2)),
  ]:
    rate = pipeline_images_per_second(split, sampler, transform, args.batches,
                                      options)
    print(f'{label:<28} {rate:>9.1f} {rate / baseline:>8.2f}', flush=True)


if __name__ == '__main__':
  main()
