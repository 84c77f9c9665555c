r"""CUB-200-2011 (classes 0-99 train, 100-199 test), the paper's recipe.

  python -m tcm_jax.main --config configs/cub200.py:resnet50 \
      --workdir /tmp/cub200_r50 --config.pretrained=resnet50.safetensors
  python -m tcm_jax.main --config configs/cub200.py:vit_b16 \
      --workdir /tmp/cub200_vit --config.pretrained=ViT-B_16.npz

Variants by override: `--config.loss.name=recall_at_k` (the other base loss),
`--config.loss.tcm.enabled=False` (the baseline). Prepare the data once with
`tfds build caltech_birds2011 --file_format=array_record` (needs
TensorFlow; training does not). Pretrained weights: a timm `.safetensors`
(e.g. huggingface.co/timm/resnet50.tv_in1k) or an AugReg/big_vision `.npz`.
"""

from tcm_jax import config as config_lib

RECIPES = {  # batch 400, 40 epochs, x0.3 at epochs 10, 20, 30
    'resnet50': dict(learning_rate=1e-4, epochs=40, milestones=(10, 20, 30)),
    'vit_b16': dict(learning_rate=1e-5, epochs=40, milestones=(10, 20, 30)),
}
ARGUMENTS = tuple(RECIPES)  # the backbones


def get_config(backbone: str = 'resnet50'):
  return config_lib.recipe_config('cub200', backbone, batch_size=400,
                                  **RECIPES[backbone])
