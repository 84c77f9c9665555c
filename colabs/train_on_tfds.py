# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Train with TCM on a benchmark from TFDS, on a Colab GPU or TPU
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tcm-jax/tcm_jax/blob/main/colabs/train_on_tfds.ipynb)
#
# The paper (Zhang et al., ICLR 2024,
# [arXiv 2307.04047](https://arxiv.org/abs/2307.04047)) trains ResNet-50 and
# ViT-B/16 encoders with a base loss (Smooth-AP or Recall@k) plus TCM on four
# open-world benchmarks, CUB-200, Cars-196, Stanford Online Products and
# iNaturalist-2018, and reports retrieval (Recall@1) together with threshold
# consistency (OPIS) on classes unseen in training. Each experiment is a
# config file in `configs/`; this notebook runs one, as
# `python -m tcm_jax.main --config configs/cub200.py:resnet50` would:
#
# 1. prepare the dataset with TensorFlow Datasets (once);
# 2. check the accelerators JAX sees;
# 3. load the config and change what you want;
# 4. train and evaluate with `tcm_jax.train.train_and_evaluate`;
# 5. read the report and the per-class utility curves, and evaluate the saved
#    embeddings with the `tcm_jax.evaluate` command.
#
# Choose a GPU or TPU runtime (Runtime > Change runtime type). The paper's
# batches of 4 images per class (400 images, 100 classes, for CUB-200; 392,
# 98 classes, for Cars-196; 4000, 1000 classes, for SOP and iNaturalist) at
# 224 px need an accelerator with a lot of memory (an A100, or a TPU); on a
# smaller GPU lower `input.classes_per_batch` in `OVERRIDES` (which departs
# from the paper's recipe).

# %%
import os, sys
if 'google.colab' in sys.modules:  # Colab: fetch and install tcm_jax
  import subprocess
  if not os.path.isdir('/content/tcm_jax'):  # not again after "Restart session"
    subprocess.run(['git', 'clone', '--depth=1', 'https://github.com/tcm-jax/tcm_jax', '/content/tcm_jax'], check=True)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '/content/tcm_jax'], check=True)
  os.chdir('/content/tcm_jax')  # configs/ and colabs/ live in the checkout
elif os.path.basename(os.getcwd()) == 'colabs':  # local Jupyter starts in colabs/
  os.chdir('..')  # the repository root, where configs/ is

# %% tags=["parameters"]
# The experiment: a file of configs/ (cub200, cars196, sop, inat2018) and its
# argument, the backbone: 'resnet50' or 'vit_b16'.
CONFIG_FILE = 'configs/cub200.py'
CONFIG_ARG = 'resnet50'
# Where the TFDS datasets are prepared (array_record files).
DATA_DIR = '/content/tensorflow_datasets'
# Run `tfds build` for the config's dataset first (skipped when it is there).
PREPARE_DATASET = True
# The Hugging Face Hub repository of the backbone's ImageNet weights: None
# for the backbone's default (the paper's, below), '' to start from random
# weights.
PRETRAINED_REPO = None
# The run's folder; None: a new temporary one. A folder on Google Drive keeps
# the checkpoints, and running again in it resumes.
WORKDIR = None
# Config keys to change (dotted), e.g. {'loss.tcm.enabled': False} for the
# baseline, {'loss.name': 'recall_at_k'}, {'input.classes_per_batch': 32},
# {'model.dtype': 'bfloat16'} (TPU, A100), {'train.num_epochs': 10.0}.
OVERRIDES = {}

# %%
import json
import os
import subprocess
import sys
import tempfile

from IPython.display import Image, display
import jax
import matplotlib.pyplot as plt

from tcm_jax import config as config_lib
from tcm_jax import report
from tcm_jax import train
from tcm_jax.data import datasets

# %% [markdown]
# ## The config
#
# `config_lib.load_config` reads a file of `configs/` as the command line's
# `--config=FILE:ARG` does: its `get_config(ARG)`, which starts from
# `config_lib.default_config()` (every key, with its meaning) and sets the
# paper's recipe for the dataset and backbone. Any key can then be changed; a
# key that does not exist fails in `check_config`, before anything is built.
#
# The backbone starts from ImageNet weights, as in the paper: timm's
# `model.safetensors` from the Hugging Face Hub, `timm/resnet50.tv_in1k` for
# ResNet-50 and `timm/vit_base_patch16_224.augreg_in21k` for ViT-B/16 unless
# `PRETRAINED_REPO` names another (downloaded with `huggingface_hub`, which
# Colab has; elsewhere `pip install huggingface_hub`).

# %%
config = config_lib.load_config(f'{CONFIG_FILE}:{CONFIG_ARG}')
config.dataset.data_dir = DATA_DIR
config.update_from_flattened_dict(OVERRIDES)
DEFAULT_PRETRAINED = {'resnet50': 'timm/resnet50.tv_in1k',  # by model.name
                      'vit_b': 'timm/vit_base_patch16_224.augreg_in21k'}
pretrained_repo = (DEFAULT_PRETRAINED.get(config.model.name, '')
                   if PRETRAINED_REPO is None else PRETRAINED_REPO)
if pretrained_repo:
  try:
    from huggingface_hub import hf_hub_download
  except ImportError as error:
    raise ImportError('the pretrained weights are downloaded with '
                      'huggingface_hub: pip install huggingface_hub (or set '
                      "PRETRAINED_REPO = '' for random weights)") from error
  config.pretrained = hf_hub_download(pretrained_repo, 'model.safetensors')
config_lib.check_config(config)
print(f'{config.model.name} on {config.dataset.name}: {config.loss.name}'
      f'{" + TCM" if config.loss.tcm.enabled else ""}, batches of '
      f'{config.input.classes_per_batch} classes x '
      f'{config.input.samples_per_class} images, '
      f'{config.train.num_steps or config.train.num_epochs} '
      f'{"steps" if config.train.num_steps else "epochs"}, '
      f'from {config.pretrained or "random weights"}')

# %% [markdown]
# ## The dataset
#
# The benchmarks are read from TFDS's `array_record` files with
# `tfds.data_source` (random access, no TensorFlow at training time). They
# are prepared once with `tfds build`, which needs TensorFlow; Colab has it.
# Train and test classes are disjoint, as in the paper: CUB-200 trains on
# classes 0-99 and tests on 100-199 (`caltech_birds2011`), Cars-196 on 0-97
# and 98-195 (`cars196`), SOP on its own splits (`stanford_online_products`),
# iNaturalist-2018 on the Smooth-AP class lists (`i_naturalist2018`, set
# `dataset.train_class_list` and `dataset.test_class_list`).
#
# Three ways to get the prepared files into `DATA_DIR`:
#
# - **Here**, with `PREPARE_DATASET = True`: the cell below runs `tfds build`.
#   CUB-200 (1.1 GB) and Cars-196 (1.9 GB) take minutes; if the Cars-196
#   download fails, the error says which archives to put in the manual folder.
#   Colab's disk is wiped with the runtime: copy `DATA_DIR` to Drive to keep it.
# - **Elsewhere, once**: on a machine with TensorFlow run
#   `pip install tensorflow tensorflow-datasets` and
#   `tfds build caltech_birds2011 --data_dir=$HOME/tensorflow_datasets --file_format=array_record`,
#   copy the resulting `caltech_birds2011/` folder to a bucket or to Drive, and
#   copy it to the local disk here before training (local reads are faster):
#   `gsutil -m cp -r gs://BUCKET/tensorflow_datasets/caltech_birds2011 /content/tensorflow_datasets/`,
#   or from Drive after `from google.colab import drive;
#   drive.mount('/content/drive')`.
# - **iNaturalist-2018** (about 300 GB) does not fit on Colab's disk: prepare
#   it on a machine with a large disk and train there, or on a TPU VM with the
#   data in a bucket.
#
# A dataset that is not prepared stops the run at once with a message naming
# the directory searched and the command that prepares it.

# %%
spec = datasets.DATASETS[config.dataset.name]
if spec.tfds_name is None:
  print(f'{config.dataset.name} is generated or shipped: nothing to prepare')
elif PREPARE_DATASET:
  command = datasets.prepare_command(spec, DATA_DIR)
  print(command)
  result = subprocess.run(command, shell=True, capture_output=True, text=True)
  print(result.stdout, result.stderr)  # what tfds said, errors included
  result.check_returncode()
else:
  print(f'expecting {spec.tfds_name} prepared in {DATA_DIR}')

# %% [markdown]
# ## The accelerators
#
# Training runs on every device JAX sees: the parameters are replicated and
# each batch is split over the devices (one program per device,
# `jax.shard_map` over a mesh axis `'data'`); the loss is computed over the
# global batch, so one step on 8 TPU cores equals one step on one device with
# the same batch. The batch and `input.eval_batch_size` must divide by the
# number of devices.

# %%
print(jax.devices())
print(f'{jax.device_count()} x {jax.devices()[0].device_kind} '
      f'({jax.default_backend()})')
if jax.default_backend() == 'cpu':
  print('JAX sees no accelerator. On a Colab GPU runtime: pip install -U '
        '"jax[cuda12]"; on a TPU runtime: pip install -U "jax[tpu]"; then '
        'Runtime > Restart session and run from the top.')

# %% [markdown]
# ## Train and evaluate
#
# `train_and_evaluate(config, workdir)` trains, checkpoints (a rerun in the
# same `workdir` resumes) and evaluates the test classes at the end. It logs
# the loss, its parts (base loss, TCM, and the fractions of hard positive and
# hard negative pairs in the batch) and the throughput every
# `train.log_every_steps` into `metrics.jsonl` and TensorBoard events under
# the run's folder `workdir` (`WORKDIR`, or the temporary folder made below;
# in Colab: `%load_ext tensorboard` then `%tensorboard --logdir {workdir}`,
# where IPython puts in the variable's value), and writes `report.md`,
# `metrics.json`, `utility_curves.png` and the test embeddings
# `embeddings.npz`.

# %%
workdir = WORKDIR or tempfile.mkdtemp(prefix='tcm_run_')
print(f'the run writes into {workdir}')
final = train.train_and_evaluate(config, workdir)
print(report.results_table(final))
print(f'everything is in {workdir}: {sorted(os.listdir(workdir))}')

# %% [markdown]
# The training curves, from `metrics.jsonl`: with TCM on, its part and the
# fractions of hard pairs fall as training goes.

# %%
with open(os.path.join(workdir, 'metrics.jsonl')) as f:
  train_logs = [r for r in map(json.loads, f) if r['kind'] == 'train']
steps = [r['step'] for r in train_logs]
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, keys in ((left, ('loss', 'base', 'tcm')),
                 (right, ('hard_pos_fraction', 'hard_neg_fraction'))):
  for key in keys:
    if key in train_logs[0]:  # the TCM keys are there when TCM is on
      ax.plot(steps, [r[key] for r in train_logs], label=key)
  ax.set_xlabel('step')
  ax.legend()
left.set_title('loss and its parts')
right.set_title('fraction of pairs that are hard')
plt.show()

# %% [markdown]
# ## The report
#
# Retrieval (Recall@K, MAP@R), threshold consistency (OPIS and eps-OPIS over
# the calibration range, where the global false accept rate goes from 1e-3 to
# 1e-1), the one global threshold at a false accept rate of 1e-2 with each
# class's false accept and false reject rates there, and the worst classes.
# The figure draws each test class's utility against the distance threshold:
# the narrower the band in the shaded calibration range, the more consistent
# one threshold is across classes.

# %%
with open(os.path.join(workdir, 'report.md')) as f:
  print(f.read())
display(Image(os.path.join(workdir, 'utility_curves.png')))

# %% [markdown]
# ## Evaluate the embeddings with the command
#
# `embeddings.npz` holds the test split's embeddings and labels. The
# `tcm_jax.evaluate` command evaluates such a file, from this or any other
# framework, with other settings: here the global threshold at a false accept
# rate of 1e-3. (It runs on the CPU here, as the accelerator belongs to this
# notebook's process; from a shell it uses the accelerator.) The notebook
# `measure_threshold_consistency` takes the same file.

# %%
result = subprocess.run(
    [sys.executable, '-m', 'tcm_jax.evaluate',
     '--embeddings', os.path.join(workdir, 'embeddings.npz'),
     '--out', os.path.join(workdir, 'evaluation_far_1e-3'),
     '--target_far=1e-3'],
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
    text=True)
print(result.stdout, result.stderr)  # the report, or what went wrong
result.check_returncode()

# %% [markdown]
# ## With and without TCM
#
# The paper's comparison is the same run with `OVERRIDES = {'loss.tcm.enabled':
# False}` in a new `WORKDIR`. `tcm_jax.plots.plot_opis_vs_recall` draws the
# runs' OPIS against their Recall@1, one arrow per base loss from without to
# with TCM:
#
# ```python
# from tcm_jax import plots
# runs = [dict(loss='smooth_ap', tcm=True, **final_with_tcm),
#         dict(loss='smooth_ap', tcm=False, **final_without_tcm)]
# fig = plots.plot_opis_vs_recall(runs)  # assigned: shown once, inline
# ```
