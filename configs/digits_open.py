r"""Open-world digits: train on 0-4, evaluate on the unseen 5-9 (5 classes).

The recipe of `configs/digits.py` (which is closed-set) on the open-world
split, at 12 px with batches of the five training digits x 16: the
reproduction study's small case (`scripts/reproduce.py --config
configs/digits_open.py --regimes scratch`). With five test classes OPIS is a
variance over five curves, and noisy; the glyph benchmark
(`configs/glyphs.py`) is the many-class case.

  python -m tcm_jax.main --config configs/digits_open.py --workdir /tmp/digits_open
"""

import os

from tcm_jax import config as config_lib


def get_config():
  config = config_lib.load_module(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'digits.py')).get_config()
  config.dataset.name = 'digits'
  config.input.image_size = 12
  config.input.classes_per_batch = 5  # all five training digits
  config.input.samples_per_class = 16
  return config
