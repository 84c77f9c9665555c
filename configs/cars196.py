r"""Cars-196 (classes 0-97 train, 98-195 test), the paper's recipe.

  python -m tcm_jax.main --config configs/cars196.py:resnet50 \
      --workdir /tmp/cars196_r50 --config.pretrained=resnet50.safetensors
  python -m tcm_jax.main --config configs/cars196.py:vit_b16 \
      --workdir /tmp/cars196_vit --config.pretrained=ViT-B_16.npz

Variants by override: `--config.loss.name=recall_at_k`,
`--config.loss.tcm.enabled=False`. Prepare the data once with
`tfds build cars196 --file_format=array_record` (see the error message for
the manual download when the original host is unavailable).
"""

from tcm_jax import config as config_lib

RECIPES = {  # batch 392, x0.3 at each milestone
    'resnet50': dict(learning_rate=1e-4, epochs=170, milestones=(80, 140)),
    'vit_b16': dict(learning_rate=1e-5, epochs=50, milestones=(20, 30, 40)),
}
ARGUMENTS = tuple(RECIPES)  # the backbones


def get_config(backbone: str = 'resnet50'):
  return config_lib.recipe_config('cars196', backbone, batch_size=392,
                                  **RECIPES[backbone])
