r"""Stanford Online Products (TFDS train / test), the paper's recipe.

  python -m tcm_jax.main --config configs/sop.py:resnet50 \
      --workdir /tmp/sop_r50 --config.pretrained=resnet50.safetensors
  python -m tcm_jax.main --config configs/sop.py:vit_b16 \
      --workdir /tmp/sop_vit --config.pretrained=ViT-B_16.npz

Variants by override: `--config.loss.name=recall_at_k`,
`--config.loss.tcm.enabled=False`. Prepare the data once with
`tfds build stanford_online_products --file_format=array_record`. Batches of
4000 are meant for a multi-accelerator host or a pod slice.
"""

from tcm_jax import config as config_lib

RECIPES = {  # batch 4000, 55 epochs, x0.3 at epochs 25, 50
    'resnet50': dict(learning_rate=2e-4, epochs=55, milestones=(25, 50)),
    'vit_b16': dict(learning_rate=5e-5, epochs=55, milestones=(25, 50)),
}
ARGUMENTS = tuple(RECIPES)  # the backbones


def get_config(backbone: str = 'resnet50'):
  config = config_lib.recipe_config('sop', backbone, batch_size=4000,
                                    **RECIPES[backbone])
  config.train.log_every_steps = 20
  return config
