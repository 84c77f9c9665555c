"""Glyph rendering speed: one worker, threads and processes, in the same run.

Renders a character set in a font set (default: the 2,965 level-1 kanji of
JIS X 0208 in the installed CJK faces, 32 px) into a fresh temporary cache,
once per configuration: in this process (the baseline), with N threads and
with N spawned worker processes. It prints the rasterising speed in glyphs per
second (pool start-up included) and its ratio against the baseline, the time
end to end (font reading, coverage, de-duplication, the cache write), the
time to load the render back from the cache, and the cache's size on disk.
The renders must be byte-identical.

  python benchmarks/glyphs.py
  python benchmarks/glyphs.py --characters latin,greek --fonts dejavu
"""

import argparse
import os
import tempfile
import time

from _machine import cpu_name  # pylint: disable=g-bad-import-order
from tcm_jax.data import glyphs


def measure(args, workers, executor):
  """(manifest, seconds end to end, seconds to load back, MiB on disk)."""
  with tempfile.TemporaryDirectory() as cache:
    kwargs = dict(image_size=args.image_size, min_faces=args.min_faces,
                  cache_dir=cache, progress=False)
    start = time.perf_counter()
    data = glyphs.render_dataset(args.characters, args.fonts, workers=workers,
                                 executor=executor, **kwargs)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    assert glyphs.render_dataset(args.characters, args.fonts, **kwargs).from_cache
    load_seconds = time.perf_counter() - start
    disk = sum(os.path.getsize(os.path.join(data.cache_path, name))
               for name in os.listdir(data.cache_path))
    return data.manifest, seconds, load_seconds, disk / 2**20


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--characters', default='jis_level1')
  parser.add_argument('--fonts', default='cjk')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--min_faces', type=int, default=2)
  parser.add_argument('--workers', type=int,
                      default=len(os.sched_getaffinity(0)),
                      help='threads / processes of the parallel runs')
  args = parser.parse_args()
  print(f'{cpu_name()} ({os.cpu_count()} cores); {args.characters} x '
        f'{args.fonts}, {args.image_size} px, min_faces {args.min_faces}')
  header = (f'{"configuration":<22} {"glyphs/s":>9} {"vs 1":>6} '
            f'{"end to end s":>13} {"cached load s":>14} {"cache MiB":>10}')
  print(header)
  baseline, files, manifest = None, None, None
  for label, workers, executor in [
      ('1 worker (inline)', 1, 'process'),
      (f'{args.workers} threads', args.workers, 'thread'),
      (f'{args.workers} processes (spawn)', args.workers, 'process')]:
    manifest, seconds, load_seconds, mib = measure(args, workers, executor)
    rate = manifest['render']['glyphs_per_second']
    baseline = baseline or rate
    files = files or manifest['files']
    assert manifest['files'] == files, 'renders differ between configurations'
    print(f'{label:<22} {rate:>9,.0f} {rate / baseline:>6.2f} {seconds:>13.1f} '
          f'{load_seconds:>14.2f} {mib:>10.1f}', flush=True)
  print(f'{manifest["render"]["glyphs"]:,} glyphs rendered per configuration; '
        f'{manifest["counts"]["kept"]:,} characters and '
        f'{manifest["counts"]["images"]:,} images kept; the three renders are '
        'byte-identical.')


if __name__ == '__main__':
  main()
