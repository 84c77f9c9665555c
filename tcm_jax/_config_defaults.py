"""The config's keys and their defaults: the sections and the paper's recipes.

`tcm_jax.config` publishes these (and documents them); the checks
(`tcm_jax._config_checks`) and the comparison of saved configs
(`tcm_jax._config_resume`) start from them. Building a config needs only
ml_collections and the encoders' option table (plain Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from tcm_jax import _encoder_options

BACKBONES = {'resnet50': 'resnet50', 'vit_b16': 'vit_b'}
RECIPES = ('imagenet', 'small', 'glyphs')
OPTIMIZERS = ('adam', 'adamw', 'sgd')
FINAL_SPLITS = ('test', 'val')

# Keys that may change when a run resumes (the length of training, the
# evaluation, the loader, where things are): any other change is another run.
RESUMABLE = ('train.', 'eval.', 'input.num_threads', 'input.worker_count',
             'input.prefetch', 'input.eval_batch_size', 'dataset.data_dir',
             'dataset.glyphs.cache_dir', 'pretrained')

# Sections whose keys `default_config` does not fix: the base loss's
# hyperparameters and the encoder's options (checked by their registries; the
# encoder's options are those of its `model.name`).
FREE_SECTIONS = ('loss.hyper', 'model')


def model_config(name: str = 'resnet50', **overrides: Any
                 ) -> ml_collections.ConfigDict:
  """The `model` section: `tcm_jax.models.encoder_config`'s, without Flax.

  `name` is 'resnet18', 'resnet34', 'resnet50', 'vit_b', 'vit_s' or 'vit_ti';
  `overrides` change its options (an unknown one is an error here, a bad
  value in `check_config`).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> model = config_lib.model_config('resnet18', width=0.25)
    >>> model.width, model.embedding_size, model.frozen_batch_norm
    (0.25, 512, False)
  """
  options = _encoder_options.defaults(name)
  unknown = sorted(set(overrides) - set(options))
  if unknown:
    raise ValueError(
        f'Unknown option(s) {unknown} for {name!r}; its options are '
        f'{sorted(options)}.')
  return ml_collections.ConfigDict({'name': name, **options, **overrides})


def default_config() -> ml_collections.ConfigDict:
  """Every config key with its default: the paper's CUB-200 ResNet-50 recipe.

  Sections `dataset`, `input`, `model` (see `model_config`), `loss` (`name`
  in the loss registry, `hyper` its hyperparameters, `tcm`), `optimizer`,
  `train`, `eval`; `seed`; `pretrained`: a timm `.safetensors` or big_vision
  `.npz` backbone, or an earlier tcm_jax run (its workdir, `checkpoints/` or
  a step's directory), with `pretrained_head` to load its head too.

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.default_config()
    >>> config.loss.name, config.loss.tcm.enabled, config.model.name
    ('smooth_ap', True, 'resnet50')
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.pretrained = ''
  config.pretrained_head = False

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'cub200'
  config.dataset.data_dir = ''          # '' : $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.dataset.train_class_list = ''  # inat2018 only: the Smooth-AP class lists
  config.dataset.test_class_list = ''
  # The side the model trains on: 'train', or for glyphs 'pretrain' (the
  # level-2 kanji, disjoint from every other side: a backbone to fine-tune).
  config.dataset.train_side = 'train'
  config.dataset.synthetic = ml_collections.ConfigDict(dict(
      num_classes=20, images_per_class=10, image_size=32, channels=3,
      jpeg=False))
  # glyphs only: characters rendered from font files (see tcm_jax.data.glyphs).
  config.dataset.glyphs = ml_collections.ConfigDict(dict(
      characters='jis_level1', fonts='cjk', image_size=32, ink_fraction=0.875,
      min_faces=2, cache_dir='', test_fraction=0.5, val_fraction=0.1,
      pretrain_characters='jis_level2'))

  config.input = ml_collections.ConfigDict()
  # 'imagenet', 'small' (tiny images: resize + shift) or 'glyphs' (affine +
  # stroke width; one channel unless model.in_channels is 3)
  config.input.recipe = 'imagenet'
  config.input.image_size = 224
  config.input.resize_size = 256    # imagenet recipe: shorter side before the crop
  config.input.classes_per_batch = 100
  config.input.samples_per_class = 4
  config.input.eval_batch_size = 256
  config.input.num_threads = 8
  config.input.worker_count = 0
  config.input.prefetch = 2

  config.model = model_config('resnet50', frozen_batch_norm=True)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'smooth_ap'
  config.loss.hyper = ml_collections.ConfigDict()  # the base loss's own
  config.loss.tcm = ml_collections.ConfigDict(dict(
      enabled=True, margin_pos=0.9, margin_neg=0.5, lambda_pos=1.0,
      lambda_neg=1.0))
  # TCM's margins from the data instead of margin_pos / margin_neg: those at
  # which these fractions of the positive / negative pairs of the validation
  # classes (the training classes' images where the dataset has no
  # validation side; never the test classes) are hard, measured with the
  # model being trained on at most `max_samples` of their images: before the
  # first step, then every `every_steps` steps (0: once).
  config.loss.tcm_from_data = ml_collections.ConfigDict(dict(
      enabled=False, hard_pos_fraction=0.2, hard_neg_fraction=0.01,
      every_steps=0, max_samples=2048))

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'          # adam (L2 in the gradient), adamw, sgd
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 4e-4    # on kernels only
  config.optimizer.momentum = 0.9         # sgd only
  config.optimizer.head_lr_multiplier = 1.0
  config.optimizer.proxy_lr_multiplier = 1.0
  config.optimizer.milestones = (10, 20, 30)  # epochs
  config.optimizer.decay_factor = 0.3
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0   # 0: no clipping

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 40.0
  config.train.num_steps = 0              # > 0 overrides num_epochs
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 0       # 0: at the end only
  config.train.checkpoint_every_steps = 500
  config.train.keep_checkpoints = 3
  config.train.best_metric = 'recall_at_1'
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict(dict(
      far_range=(1e-3, 1e-1), target_far=1e-2, epsilon=0.1,
      num_thresholds=101, ks=(1, 2, 4, 8), beta=1.0,
      # 'exact' (two passes, thresholds anywhere) or 'histogram' (one pass,
      # thresholds on a grid of 2**-14; metrics.evaluate_embeddings).
      engine='exact',
      # Raw-input baselines in the final report: the test images' pixels and
      # their whitened PCA fitted on the training classes (tcm_jax.baselines).
      baselines=True, baseline_pca_components=64,
      # The split of the final evaluation: 'test', or 'val' for the runs that
      # choose hyperparameters, so that the test classes are seen once.
      final_split='test',
      # Confidence intervals of the final metrics over classes (seeded
      # bootstrap, tcm_jax.metrics.class_bootstrap); 0 resamples: none.
      bootstrap_resamples=1000, bootstrap_confidence=0.95,
      # Verification operating points of the final split over all pairs (TAR
      # at each of these FARs, EER, ROC AUC; metrics.operating_points), with
      # the thresholds chosen on the validation classes when the dataset has
      # them (metrics.calibration_transfer); (): none.
      fars=(1e-4, 1e-3, 1e-2, 1e-1)))
  return config


def recipe_config(dataset: str, backbone: str, *, batch_size: int,
                  epochs: int, milestones: Sequence[int],
                  learning_rate: float) -> ml_collections.ConfigDict:
  """The paper's recipe (protocol.md) for one dataset and backbone.

  ResNet-50: frozen BatchNorm, GeM, Adam; ViT-B/16: CLS token, AdamW; both
  LayerNorm + Linear to 512 + L2, 224 px crops, batches of `batch_size / 4`
  classes x 4 images, weight decay 4e-4, learning rate x 0.3 at each
  milestone (epochs), Smooth-AP + TCM (m+ 0.9, m- 0.5). The backbone starts
  from `config.pretrained` (ImageNet weights in the paper).

  Examples:
    >>> from tcm_jax import config as config_lib
    >>> config = config_lib.recipe_config(
    ...     'cars196', 'vit_b16', batch_size=392, epochs=50,
    ...     milestones=(20, 30, 40), learning_rate=1e-5)
    >>> config.optimizer.name, config.input.classes_per_batch
    ('adamw', 98)
  """
  if backbone not in BACKBONES:
    raise ValueError(f'backbone must be one of {sorted(BACKBONES)}, got '
                     f'{backbone!r}.')
  if batch_size % 4:
    raise ValueError(f'batch_size must be a multiple of 4 (classes x 4 '
                     f'images), got {batch_size}.')
  config = default_config()
  config.dataset.name = dataset
  config.input.classes_per_batch = batch_size // 4
  config.input.samples_per_class = 4
  if backbone == 'resnet50':
    config.model = model_config('resnet50', frozen_batch_norm=True)
    config.optimizer.name = 'adam'
  else:
    config.model = model_config('vit_b')
    config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = learning_rate
  config.optimizer.milestones = tuple(milestones)
  config.train.num_epochs = float(epochs)
  return config
