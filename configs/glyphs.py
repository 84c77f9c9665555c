r"""An open-world benchmark with thousands of classes that runs offline: glyphs.

Class = character, sample = typeface. The 2,965 level-1 kanji of JIS X 0208
are rendered from Debian's CJK fonts: Noto Sans and Serif CJK (Regular and
Bold, in their Japanese, Korean, Simplified and Traditional Chinese and Hong
Kong forms) and the three Kouzan brush styles (regular, semi-cursive,
cursive); faces that draw a character identically count once, so a class has
7 to 23 images. Classes are split by a fixed hash of the code point: about
half for testing, never seen in training; a tenth, held out of training, for
choosing the checkpoint and hyperparameters (`val`); the rest for training.

  apt-get install fonts-noto-cjk fonts-kouzan-mouhitsu
  python -m tcm_jax.main --config configs/glyphs.py --workdir /tmp/tcm_glyphs

The first run renders the glyphs (15 to 25 s) into a cache
(`~/.cache/tcm_jax/glyphs`, or `$TCM_JAX_CACHE`); `python -m
tcm_jax.data.glyphs --min_faces 4` prints the dataset's facts and draws
samples. A ResNet-18 at quarter width learns a 128-d embedding from scratch
with Multi-Similarity + TCM (the paper's margins), 4,950 steps of 32 classes
x 4 faces, the checkpoints scored on the validation classes.

Expected (one seed, 2-core CPU, 8 minutes with the render, 7.5 of them
training), on the 1,427 test classes (16,517 images), against the raw-input
baselines:

  | | Recall@1 | MAP@R | OPIS | 0.1-OPIS |
  |---|---|---|---|---|
  | model | 0.874 | 0.623 | 0.0042 | 0.017 |
  | pixels | 0.798 | 0.435 | 0.0161 | 0.056 |
  | pca64 (whitened, fitted on training classes) | 0.802 | 0.465 | 0.0115 | 0.048 |

On the validation classes at the last step: Recall@1 0.916, MAP@R 0.746.

The recipe (stem, width, steps, loss) was chosen on the validation classes
(`--config.eval.final_split=val`, which ends a tuning run on them instead of
the test classes); the test classes were evaluated once.
"""

from tcm_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.dataset.name = 'glyphs'
  config.dataset.glyphs.image_size = 32
  config.dataset.glyphs.min_faces = 4

  config.input.recipe = 'glyphs'   # random affine + stroke width, one channel
  config.input.image_size = 32
  config.input.classes_per_batch = 32
  config.input.samples_per_class = 4
  config.input.eval_batch_size = 512
  config.input.num_threads = 2

  # The standard stem (stride 2 and a max-pool) keeps a 32 px step ~9x
  # cheaper than the small-image stem: more steps in the time, and better.
  config.model = config_lib.model_config(
      'resnet18', width=0.25, embedding_size=128, in_channels=1)

  config.loss.name = 'multi_similarity'

  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.milestones = (32, 41)
  config.train.num_epochs = 45          # 110 steps an epoch: 4,950 steps
  config.train.log_every_steps = 250
  config.train.eval_every_steps = 1000  # on the validation classes
  config.train.checkpoint_every_steps = 1000
  config.train.best_metric = 'map_at_r'
  return config
