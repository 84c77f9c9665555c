r"""The test suite's reference outputs from timm and torchvision (tests/fixtures/).

  python scripts/make_reference_fixtures.py           # writes the fixtures
  python scripts/make_reference_fixtures.py --check   # recomputes, compares, writes nothing

The tests compare tcm_jax's encoders (after `load_timm` / `load_big_vision_npz`)
and image transforms with timm and torchvision without importing either: this
script feeds the reference libraries the inputs of tests/fixtures/reference_cases.py
(weights, images and transform parameters drawn in NumPy from fixed seeds; no
network weights are stored) and stores only their outputs:

- tests/fixtures/timm.npz: `forward_features` of timm's resnet18, resnet50 and
  vit_base_patch16_224 with seeded weights on seeded images (ViT: every 14th
  token), of a ViT-Ti/4 read by timm's own AugReg `.npz` loader, and timm's
  parameter counts of the six backbones;
- tests/fixtures/torchvision.npz: Resize / CenterCrop / resized_crop outputs
  (uint8; at 224 pixels every 2nd row and column) for explicit sizes and boxes,
  the ToTensor + Normalize lookup tables, RandomResizedCrop.get_params'
  fallback boxes and 3000 of its own draws, and the small-image eval transform;
- tests/fixtures/manifest.json: the versions that made them.

Exact pins, the `reference` extra of setup.cfg (checked against it here; the
script refuses other versions unless --any_version):

  torch==2.14.1  torchvision==0.29.1  timm==1.0.31

torchvision resizes PIL images with Pillow, so the transform fixtures also hold
for the Pillow recorded in manifest.json (constraints.txt's). Install and run,
on CPU (about 20 s on 2 cores; made with PyPI's default build of torch, run on
the CPU):

  python -m pip install -c constraints.txt -e ".[dev,reference]"
  python scripts/make_reference_fixtures.py
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import pathlib
import platform
import sys
import tempfile
import zipfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fixtures import reference_cases as rc  # pylint: disable=g-import-not-at-top,wrong-import-position

PINS = {'torch': '2.14.1', 'torchvision': '0.29.1', 'timm': '1.0.31'}


def _base_version(version: str) -> str:
  return version.split('+')[0]  # 2.14.1+cu130 -> 2.14.1


def _check_pins_match_setup_cfg() -> None:
  config = configparser.ConfigParser()
  config.read(REPO / 'setup.cfg')
  lines = config['options.extras_require']['reference'].split()
  pinned = dict(line.split('==') for line in lines)
  if pinned != PINS:
    raise SystemExit(f'setup.cfg pins the reference extra as {pinned}, this '
                     f'script as {PINS}: make them agree.')


def _versions(torch, torchvision, timm) -> dict[str, str]:
  import PIL  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'numpy': np.__version__,
          'pillow': PIL.__version__, 'torch': torch.__version__,
          'torchvision': torchvision.__version__, 'timm': timm.__version__}


# --- timm -------------------------------------------------------------------

def timm_fixtures(torch, timm) -> dict[str, np.ndarray]:
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top
  out = {}
  for name, case in rc.TIMM_CASES.items():
    model = timm.create_model(case['timm_name'], pretrained=False,
                              num_classes=0).eval()
    state = model.state_dict()
    weights = rc.timm_weights({k: tuple(v.shape) for k, v in state.items()
                               if v.is_floating_point()}, case['seed'])
    model.load_state_dict(
        {**state, **{k: torch.from_numpy(v) for k, v in weights.items()}},
        strict=True)
    images = rc.normal_images(case['seed'], case['images'])
    with torch.no_grad():
      features = model.forward_features(torch.from_numpy(images)).numpy()
    out[f'{name}/features'] = rc.stored_part(name, features)
    out[f'{name}/images_sha256'] = np.array(rc.digest(images))
    print(f'{name}: features {features.shape}, stored '
          f'{out[f"{name}/features"].shape}', flush=True)

  case = rc.NPZ_VIT
  reference = vision_transformer.VisionTransformer(
      img_size=case['image_size'], patch_size=case['patch_size'],
      embed_dim=case['width'], depth=case['depth'], num_heads=case['heads'],
      mlp_ratio=case['mlp'] / case['width'], num_classes=0).eval()
  with tempfile.TemporaryDirectory() as folder:
    path = pathlib.Path(folder) / 'augreg.npz'
    np.savez(path, **rc.augreg_npz(**case))
    vision_transformer._load_weights(reference, str(path))  # pylint: disable=protected-access
  images = rc.normal_images(case['seed'], case['images'])
  with torch.no_grad():
    out['npz_vit/features'] = reference.forward_features(
        torch.from_numpy(images)).numpy()
  out['npz_vit/images_sha256'] = np.array(rc.digest(images))

  for ours, theirs in rc.PARAMETER_COUNTS.items():
    with torch.device('meta'):  # shapes only
      model = timm.create_model(theirs, pretrained=False, num_classes=0)
    out[f'parameters/{ours}'] = np.array(
        sum(p.numel() for p in model.parameters()), np.int64)
  return out


# --- torchvision --------------------------------------------------------------

def torchvision_fixtures(torch, torchvision, timm) -> dict[str, np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # pylint: disable=g-import-not-at-top,g-multiple-import
  T = torchvision.transforms  # pylint: disable=invalid-name
  F = T.functional  # pylint: disable=invalid-name
  out = {}

  def lut(mean, std):
    ramp = np.arange(256, dtype=np.uint8)[None, :, None].repeat(len(mean), 2)
    image = Image.fromarray(ramp if len(mean) == 3 else ramp[..., 0])
    return T.Normalize(mean, std)(T.ToTensor()(image)).numpy()[:, 0]

  def eval_case(key, image, mean, std):
    pil = Image.fromarray(image)
    crop = np.asarray(T.CenterCrop(224)(T.Resize(256)(pil)))
    whole = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                       T.Normalize(mean, std)])(pil).numpy().transpose(1, 2, 0)
    # The table reproduces torchvision's whole pipeline exactly.
    np.testing.assert_array_equal(rc.normalized(lut(mean, std), crop), whole)
    out[key] = rc.kept(crop)

  out['lut/imagenet'] = lut(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
  out['lut/gray'] = lut(rc.GRAY_MEAN, rc.GRAY_STD)
  for shape in rc.EVAL_SHAPES:
    eval_case(f'eval/{rc.shape_key(shape)}', rc.uint8_image(sum(shape), shape),
              IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
  for shape in rc.GRAY_EVAL_SHAPES:
    eval_case(f'gray_eval/{rc.shape_key(shape)}',
              rc.uint8_image(1, shape).reshape(shape[:2]), rc.GRAY_MEAN,
              rc.GRAY_STD)

  for shape in rc.BOX_SHAPES:
    pil = Image.fromarray(rc.uint8_image(2, shape))
    for box in rc.BOXES:
      for size in rc.BOX_SIZES:
        out[f'box/{rc.shape_key(shape)}/{rc.shape_key(box)}/{size}'] = rc.kept(
            np.asarray(F.resized_crop(pil, *box, [size, size])))

  for shape, scale, ratio in rc.FALLBACK_CASES:
    boxes = set()
    for seed in range(3):  # deterministic: no drawn box fits
      torch.manual_seed(seed)
      boxes.add(tuple(T.RandomResizedCrop.get_params(
          torch.zeros((1,) + shape), list(scale), list(ratio))))
    assert len(boxes) == 1, (shape, scale, ratio, boxes)
    out[rc.fallback_key(shape, scale, ratio)] = np.array(boxes.pop(), np.int64)

  d = rc.DISTRIBUTION
  torch.manual_seed(d['torch_seed'])
  image = torch.zeros((1, d['height'], d['width']))
  out['distribution/boxes'] = np.array(
      [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
       for _ in range(d['draws'])], np.int16)

  out['small_eval'] = T.Compose([
      T.Resize((32, 32)), T.ToTensor(), T.Normalize([0.5], [0.5])])(
          Image.fromarray(rc.digit(rc.SMALL_DIGIT_SEED))).numpy()[0]
  return out


# --- files ------------------------------------------------------------------

def write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """np.savez_compressed, byte for byte reproducible (sorted, fixed dates)."""
  with zipfile.ZipFile(path, 'w') as archive:
    for key in sorted(arrays):
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.asarray(arrays[key]),
                                allow_pickle=False)
      archive.writestr(zipfile.ZipInfo(key + '.npy', (1980, 1, 1, 0, 0, 0)),
                       buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                       compresslevel=9)


def compare(name: str, stored: dict[str, np.ndarray],
            fresh: dict[str, np.ndarray]) -> list[str]:
  problems = []
  if stored.keys() != fresh.keys():
    problems.append(f'{name}: keys differ: only stored '
                    f'{sorted(stored.keys() - fresh.keys())}, only fresh '
                    f'{sorted(fresh.keys() - stored.keys())}')
  for key in sorted(stored.keys() & fresh.keys()):
    a, b = stored[key], fresh[key]
    try:
      if a.dtype.kind == 'f':
        # Float reductions may reorder with the thread count.
        np.testing.assert_allclose(b, a, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(a).max()))
      else:
        np.testing.assert_array_equal(b, a)
    except AssertionError as error:
      problems.append(f'{name}:{key}: {str(error).strip()[:400]}')
  return problems


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='recompute and compare with the stored fixtures; '
                           'write nothing')
  parser.add_argument('--any_version', action='store_true',
                      help='run with versions other than the pins')
  args = parser.parse_args(argv)
  _check_pins_match_setup_cfg()
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  versions = _versions(torch, torchvision, timm)
  other = {k: versions[k] for k, v in PINS.items()
           if _base_version(versions[k]) != v}
  if other and not args.any_version:
    raise SystemExit(f'pinned {PINS}, installed {other}: install the '
                     f'reference extra, or pass --any_version.')
  torch.manual_seed(0)
  fresh = {rc.TIMM: timm_fixtures(torch, timm),
           rc.TORCHVISION: torchvision_fixtures(torch, torchvision, timm)}
  if args.check:
    problems = [p for path, arrays in fresh.items()
                for p in compare(path.name, rc.load(path), arrays)]
    recorded = rc.manifest()['versions']
    print(f'stored with {recorded}\nchecked with {versions}')
    print('\n'.join(problems) or 'the stored fixtures match.')
    return 1 if problems else 0
  for path, arrays in fresh.items():
    write_npz(path, arrays)
  rc.MANIFEST.write_text(json.dumps({
      'made_by': 'scripts/make_reference_fixtures.py',
      'versions': versions,
      'files': {p.name: p.stat().st_size for p in fresh},
  }, indent=2) + '\n')
  for path in fresh:
    print(f'{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB')
  return 0


if __name__ == '__main__':
  sys.exit(main())
