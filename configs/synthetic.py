r"""Throughput: the paper's models on generated images, 256 px cropped to 224 (no dataset).

  python -m tcm_jax.main --config configs/synthetic.py:resnet50 --workdir /tmp/synthetic_r50
  python -m tcm_jax.main --config configs/synthetic.py:vit_b16 --workdir /tmp/synthetic_vit \
      --config.input.classes_per_batch=64   # batch 256

Images per second are logged every `train.log_every_steps` (metrics.jsonl,
TensorBoard). The images are uint8 arrays made on the fly, so the input
pipeline costs little; `--config.dataset.synthetic.jpeg=True` adds JPEG
decoding. Model compute runs in bfloat16.
"""

from tcm_jax import config as config_lib

BATCH = 128
ARGUMENTS = tuple(config_lib.BACKBONES)


def get_config(backbone: str = 'resnet50'):
  config = config_lib.recipe_config('synthetic', backbone, batch_size=BATCH,
                                    learning_rate=1e-4, epochs=1,
                                    milestones=())
  config.dataset.synthetic.num_classes = 400
  config.dataset.synthetic.images_per_class = 8
  config.dataset.synthetic.image_size = 256
  config.model.dtype = 'bfloat16'
  config.train.num_steps = 200
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 0
  return config
