r"""The paper's toy experiment: ArcFace on all ten digits with 2-D embeddings.

With two dimensions the embeddings live on a circle, where the effect of TCM
can be seen: each class's arc, and the gaps between neighbouring classes.
Closed-world (the figure is about the classes trained on): every digit in
training, each class's images split in halves for training and test.

  python -m tcm_jax.main --config configs/digits_toy.py:tcm --workdir /tmp/toy_tcm
  python -m tcm_jax.main --config configs/digits_toy.py:base --workdir /tmp/toy_base

`colabs/digits_toy.ipynb` runs both and draws the class densities on the
circle side by side, with the utility curves before and after.
"""

from tcm_jax import config as config_lib

ARGUMENTS = ('tcm', 'base')


def get_config(variant: str = 'tcm'):
  if variant not in ARGUMENTS:
    raise ValueError(f"digits_toy takes 'tcm' or 'base', got {variant!r}.")
  config = config_lib.default_config()
  config.dataset.name = 'digits_closed'

  config.input.recipe = 'small'
  config.input.image_size = 16
  config.input.classes_per_batch = 10  # every digit in every batch
  config.input.samples_per_class = 8
  config.input.eval_batch_size = 128
  config.input.num_threads = 2

  config.model = config_lib.model_config(
      'resnet18', width=0.25, small_images=True, embedding_size=2)

  config.loss.name = 'arcface'
  config.loss.tcm.enabled = variant == 'tcm'

  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.milestones = (20, 27)
  config.train.num_epochs = 30
  config.train.log_every_steps = 25
  return config
