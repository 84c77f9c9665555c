r"""The default run: open-world handwritten digits, a small ResNet, Smooth-AP + TCM.

scikit-learn's 8x8 digits ship with it, so this runs anywhere, offline, in
about a minute on a laptop CPU: train on digits 0-4, evaluate retrieval and
threshold consistency on the unseen digits 5-9.

  python -m tcm_jax.main --config configs/digits.py --workdir /tmp/tcm_digits

Without TCM, for comparison:

  python -m tcm_jax.main --config configs/digits.py --workdir /tmp/digits_base \
      --config.loss.tcm.enabled=False
"""

from tcm_jax import models
from tcm_jax import train


def get_config():
  config = train.default_config()
  config.dataset.name = 'digits'

  config.input.recipe = 'small'      # resize to 16 px, random shifts
  config.input.image_size = 16
  config.input.classes_per_batch = 5  # all five training digits
  config.input.samples_per_class = 16
  config.input.eval_batch_size = 128
  config.input.num_threads = 2

  config.model = models.encoder_config(
      'resnet18', width=0.25, small_images=True, embedding_size=64)

  config.loss.name = 'smooth_ap'

  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.milestones = (15, 22)
  config.train.num_epochs = 27
  config.train.log_every_steps = 25
  config.train.eval_every_steps = 100
  config.train.checkpoint_every_steps = 100
  return config
