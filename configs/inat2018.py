r"""iNaturalist-2018 with the Smooth-AP class split, the paper's recipe.

  python -m tcm_jax.main --config configs/inat2018.py:resnet50 \
      --workdir /tmp/inat_r50 --config.pretrained=resnet50.safetensors \
      --config.dataset.train_class_list=Inat_dataset_splits/Inaturalist_train_set1.txt \
      --config.dataset.test_class_list=Inat_dataset_splits/Inaturalist_test_set1.txt
  python -m tcm_jax.main --config configs/inat2018.py:vit_b16 ... (the same flags)

The class lists are those of Brown et al. (Smooth-AP, ECCV 2020) and must be
supplied as files. Variants by override: `--config.loss.name=recall_at_k`,
`--config.loss.tcm.enabled=False`. Prepare the data once with
`tfds build i_naturalist2018 --file_format=array_record`.
"""

from tcm_jax import config as config_lib

RECIPES = {  # batch 4000, 90 epochs, x0.3 at each milestone
    'resnet50': dict(learning_rate=1e-4, epochs=90, milestones=(40, 70)),
    'vit_b16': dict(learning_rate=5e-5, epochs=90, milestones=(10, 40, 70)),
}
ARGUMENTS = tuple(RECIPES)  # the backbones


def get_config(backbone: str = 'resnet50'):
  config = config_lib.recipe_config('inat2018', backbone, batch_size=4000,
                                    **RECIPES[backbone])
  config.train.log_every_steps = 20
  return config
