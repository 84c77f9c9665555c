"""Pretrained-weight import: timm (against timm itself) and the big_vision / AugReg npz.

timm's outputs for seeded weights and images are stored in tests/fixtures (made
by scripts/make_reference_fixtures.py), so the comparisons run without PyTorch;
with the `reference` extra installed, the live comparisons run too.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from tcm_jax import models
from tcm_jax.models import pretrained
from tests.fixtures import reference_cases as rc


def _leaves(module):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(nnx.state(module))[0]}


# --- against timm's stored outputs (tests/fixtures) --------------------------------

_STORED = rc.load(rc.TIMM)


def _seeded_images(name, case):
  images = rc.normal_images(case['seed'], case['images'])
  assert rc.digest(images) == str(_STORED[f'{name}/images_sha256']), (
      f'NumPy draws other images than the fixture of {name} was made from; '
      f'{rc.REGENERATE}')
  return images


@pytest.mark.parametrize('name', [
    'resnet18',  # the basic block (ResNet-18/34), fast
    pytest.param('resnet50', marks=pytest.mark.slow),
    pytest.param('vit_b', marks=pytest.mark.slow),
])
def test_timm_features_match_stored_timm_after_import(tmp_path, name):
  # The weights, drawn for the keys timm_keys lists, are those the fixture
  # script loaded into timm's model (each key has its own seeded stream).
  case = rc.TIMM_CASES[name]
  encoder = models.create_encoder(case['config'], rngs=nnx.Rngs(0))
  path = tmp_path / 'model.safetensors'
  save_file(rc.timm_weights(pretrained.timm_keys(encoder), case['seed']),
            str(path))
  pretrained.load_timm(encoder, path)
  images = _seeded_images(name, case)
  graphdef, params, state = models.split(encoder)
  features, _ = jax.jit(
      lambda p, s, x: models.apply(graphdef, p, s, x, features=True))(
          params, state, images.transpose(0, 2, 3, 1))
  features = np.asarray(features)
  if features.ndim == 4:  # NHWC -> NCHW, timm's layout
    features = features.transpose(0, 3, 1, 2)
  features = rc.stored_part(name, features)
  expected = _STORED[f'{name}/features']
  assert features.shape == expected.shape
  # 1e-4 relative to the features' scale (a ResNet's grow to hundreds).
  scale = np.abs(expected).max()
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * scale)


def test_npz_layout_matches_timms_own_reader_stored(tmp_path):
  # An independent reader of the AugReg layout: timm's loader of Google's npz
  # files read this seeded file into its ViT; its features are stored. Our
  # loader must read it to the same features, and our saver write it back.
  case = rc.NPZ_VIT
  tensors = rc.augreg_npz(**case)
  np.savez(tmp_path / 'augreg.npz', **tensors)
  vit = pretrained.load_big_vision_npz(
      _vit(0, patch_size=case['patch_size'], image_size=case['image_size']),
      tmp_path / 'augreg.npz')
  images = _seeded_images('npz_vit', case)
  np.testing.assert_allclose(vit(images.transpose(0, 2, 3, 1)),
                             _STORED['npz_vit/features'], rtol=1e-4, atol=1e-4)
  pretrained.save_big_vision_npz(vit, tmp_path / 'saved.npz')
  with np.load(tmp_path / 'saved.npz') as saved:
    assert sorted(saved) == sorted(tensors)
    for key, value in tensors.items():
      np.testing.assert_array_equal(saved[key], value, err_msg=key)


# --- against timm itself (live, with the reference extra) --------------------------

def _randomise(model, torch):
  """Random statistics and affine weights everywhere, so that every key matters."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.1, generator=generator)
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.1, generator=generator)
        module.running_var.uniform_(0.5, 1.5, generator=generator)
      if isinstance(module, torch.nn.Linear) and module.bias is not None:
        module.bias.normal_(0.0, 0.02, generator=generator)
    for name in ('cls_token', 'pos_embed'):
      if hasattr(model, name):
        getattr(model, name).normal_(0.0, 0.5, generator=generator)


@pytest.mark.slow
@pytest.mark.parametrize('timm_name, config, size', [
    # 72 px: the strided convolutions meet odd sizes (9 -> 5) as at 224 (7).
    ('resnet50', {'name': 'resnet50'}, 72),
    ('vit_base_patch16_224', {'name': 'vit_b'}, 224),
])
def test_timm_features_match_after_import(tmp_path, timm_name, config, size):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  from safetensors.torch import save_file as save_torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  reference = timm.create_model(timm_name, pretrained=False).eval()
  _randomise(reference, torch)
  path = tmp_path / 'model.safetensors'
  save_torch({k: v.contiguous() for k, v in reference.state_dict().items()},
             str(path))
  images = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(
      np.float32)
  with torch.no_grad():
    expected = reference.forward_features(torch.from_numpy(images)).numpy()

  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  pretrained.load_timm(encoder, path)
  graphdef, params, state = models.split(encoder)
  features, _ = jax.jit(
      lambda p, s, x: models.apply(graphdef, p, s, x, features=True))(
          params, state, images.transpose(0, 2, 3, 1))
  features = np.asarray(features)
  if features.ndim == 4:  # NHWC -> NCHW, timm's layout
    features = features.transpose(0, 3, 1, 2)
  assert features.shape == expected.shape
  # 1e-4 relative to the features' scale (a ResNet's grow to hundreds).
  scale = np.abs(expected).max()
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * scale)


def test_timm_resnet18_features_match_after_import(tmp_path):
  # The basic block (ResNet-18/34), fast: small images, same weights.
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  from safetensors.torch import save_file as save_torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(1)
  reference = timm.create_model('resnet18', pretrained=False).eval()
  _randomise(reference, torch)
  save_torch({k: v.contiguous() for k, v in reference.state_dict().items()},
             str(tmp_path / 'r18.safetensors'))
  images = np.random.default_rng(1).normal(size=(2, 3, 40, 40)).astype(
      np.float32)
  with torch.no_grad():
    expected = reference.forward_features(torch.from_numpy(images)).numpy()
  resnet = models.ResNet('resnet18', rngs=nnx.Rngs(0))
  pretrained.load_timm(resnet, tmp_path / 'r18.safetensors')
  features = np.asarray(resnet(images.transpose(0, 2, 3, 1))).transpose(
      0, 3, 1, 2)
  np.testing.assert_allclose(features, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_npz_layout_matches_timms_own_reader(tmp_path):
  # An independent reader of the AugReg layout: timm's loader of Google's npz
  # files. A convention shared by our saver and loader would not survive it.
  torch = pytest.importorskip('torch')
  pytest.importorskip('timm')
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top

  vit = _vit(3)
  rng = np.random.default_rng(3)
  for _, variable in nnx.iter_graph(vit):
    if isinstance(variable, nnx.Param):  # biases and norms non-trivial too
      variable[...] = jnp.asarray(
          rng.normal(0.0, 0.2, variable.shape), jnp.float32)
  pretrained.save_big_vision_npz(vit, tmp_path / 'vit.npz')
  reference = vision_transformer.VisionTransformer(
      img_size=8, patch_size=4, embed_dim=192, depth=12, num_heads=3,
      num_classes=0).eval()
  vision_transformer._load_weights(reference, str(tmp_path / 'vit.npz'))  # pylint: disable=protected-access
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference.forward_features(
        torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(vit(images), expected, rtol=1e-4, atol=1e-4)


# --- timm layout without PyTorch -----------------------------------------------

def _random_checkpoint(keys, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in keys.items()}


@pytest.mark.parametrize('config', [
    {'name': 'resnet18', 'width': 0.25},
    {'name': 'resnet50', 'width': 0.125},
    {'name': 'vit_ti', 'patch_size': 8, 'image_size': 16},
])
def test_timm_layout_maps_every_key_once(tmp_path, config):
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  keys = pretrained.timm_keys(encoder)
  backbone = _leaves(encoder.backbone)
  assert len(keys) == len(backbone)
  tensors = _random_checkpoint(keys)
  # Keys a timm state dict also holds, which the import skips.
  extra = {'fc.weight': np.zeros((10, 4), np.float32),
           'head.bias': np.zeros(10, np.float32)}
  if config['name'].startswith('resnet'):
    extra['bn1.num_batches_tracked'] = np.zeros((), np.int64)
  save_file({**tensors, **extra}, str(tmp_path / 'm.safetensors'))
  pretrained.load_timm(encoder, tmp_path / 'm.safetensors')

  loaded = sorted(np.sort(v.ravel()).tobytes() for v in
                  _leaves(encoder.backbone).values())
  written = sorted(np.sort(v.ravel()).tobytes() for v in tensors.values())
  assert loaded == written  # every value arrived, each exactly once


def test_timm_conv_and_linear_orientation(tmp_path):
  vit = models.ViT('vit_ti', patch_size=8, image_size=16, rngs=nnx.Rngs(0))
  tensors = _random_checkpoint(pretrained.timm_keys(vit))
  save_file(tensors, str(tmp_path / 'm.safetensors'))
  pretrained.load_timm(vit, tmp_path / 'm.safetensors')
  # PyTorch Conv2d (out, in, kh, kw) -> Flax (kh, kw, in, out).
  np.testing.assert_array_equal(
      vit.patch_embed.kernel[...][2, 5, 1, 7],
      tensors['patch_embed.proj.weight'][7, 1, 2, 5])
  # PyTorch Linear (out, in) -> Flax (in, out).
  np.testing.assert_array_equal(
      vit.blocks[4].mlp.fc1.kernel[...][3, 9],
      tensors['blocks.4.mlp.fc1.weight'][9, 3])


def test_small_image_stem_keeps_its_init(tmp_path):
  resnet = models.ResNet('resnet18', width=0.25, small_images=True,
                         rngs=nnx.Rngs(0))
  keys = pretrained.timm_keys(resnet)
  assert not [k for k in keys if k.startswith(('conv1.', 'bn1.'))]
  full = models.ResNet('resnet18', width=0.25, rngs=nnx.Rngs(1))
  tensors = _random_checkpoint(pretrained.timm_keys(full))
  save_file(tensors, str(tmp_path / 'm.safetensors'))
  stem = np.asarray(resnet.conv1.kernel[...])
  pretrained.load_timm(resnet, tmp_path / 'm.safetensors')  # 7x7 stem skipped
  np.testing.assert_array_equal(resnet.conv1.kernel[...], stem)
  np.testing.assert_array_equal(resnet.bn1.var[...], np.ones(16))
  np.testing.assert_array_equal(resnet.layer1[0].bn1.var[...],
                                tensors['layer1.0.bn1.running_var'])


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
  resnet18 = models.ResNet('resnet18', width=0.25, rngs=nnx.Rngs(0))
  save_file(_random_checkpoint(pretrained.timm_keys(resnet18)),
            str(tmp_path / 'r18.safetensors'))
  resnet50 = models.ResNet('resnet50', width=0.25, rngs=nnx.Rngs(0))
  before = _leaves(resnet50)
  with pytest.raises(pretrained.CheckpointMismatchError) as error:
    pretrained.load_timm(resnet50, tmp_path / 'r18.safetensors')
  message = str(error.value)
  assert 'r18.safetensors does not fit this resnet50 (width 0.25)' in message
  assert re.search(r'\d+ missing keys: .*layer1\.0\.conv3\.weight', message)
  assert re.search(
      r'shape mismatches: .*layer1\.0\.conv1\.weight: file \(16, 16, 3, 3\), '
      r'model expects \(16, 16, 1, 1\)', message)
  # Nothing was written.
  after = _leaves(resnet50)
  assert all(np.array_equal(after[k], v) for k, v in before.items())

  vit = models.ViT('vit_ti', patch_size=8, image_size=16, rngs=nnx.Rngs(0))
  with pytest.raises(pretrained.CheckpointMismatchError,
                     match=r'(?s)vit_ti .*150 missing keys: blocks\.0\..*'
                           r'100 unexpected keys: .*layer1\.0'):
    pretrained.load_timm(vit, tmp_path / 'r18.safetensors')


def test_vit_of_another_resolution_is_refused_with_the_shapes(tmp_path):
  vit16 = models.ViT('vit_ti', patch_size=8, image_size=16, rngs=nnx.Rngs(0))
  save_file(_random_checkpoint(pretrained.timm_keys(vit16)),
            str(tmp_path / 'm.safetensors'))
  vit32 = models.ViT('vit_ti', patch_size=8, image_size=32, rngs=nnx.Rngs(0))
  with pytest.raises(pretrained.CheckpointMismatchError,
                     match=r'pos_embed: file \(1, 5, 192\), model expects '
                           r'\(1, 17, 192\)'):
    pretrained.load_timm(vit32, tmp_path / 'm.safetensors')


def test_import_refuses_other_modules():
  with pytest.raises(TypeError, match='Encoder, ResNet or ViT, got Linear'):
    pretrained.timm_keys(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


# --- big_vision / AugReg npz -------------------------------------------------------

def _vit(seed, **kwargs):
  kwargs = {'patch_size': 4, 'image_size': 8, **kwargs}
  return models.ViT('vit_ti', rngs=nnx.Rngs(seed), **kwargs)


def test_npz_round_trip_and_same_features(tmp_path):
  a, b = _vit(0), _vit(1)
  path = tmp_path / 'vit.npz'
  pretrained.save_big_vision_npz(a, path)
  with np.load(path) as data:
    names = set(data)
  assert 'Transformer/encoderblock_11/MultiHeadDotProductAttention_1/query/kernel' in names
  assert np.load(path)['Transformer/encoderblock_0/'
                       'MultiHeadDotProductAttention_1/query/kernel'].shape == (
                           192, 3, 64)
  pretrained.load_big_vision_npz(b, path)
  before, after = _leaves(a), _leaves(b)
  assert before.keys() == after.keys()
  for key in before:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  np.testing.assert_array_equal(a(x), b(x))


def _attention_reference(x, q, k, v, out, out_bias):
  """Multi-head attention straight from per-head kernels, as big_vision computes it."""
  q, k, v = (np.einsum('td,dhe->hte', x, w) for w in (q, k, v))
  logits = np.einsum('hte,hse->hts', q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('hts,hse,hed->td', weights, v, out) + out_bias


def test_npz_heads_fuse_into_qkv_as_big_vision_computes_them(tmp_path):
  vit = _vit(0)
  pretrained.save_big_vision_npz(vit, tmp_path / 'a.npz')
  rng = np.random.default_rng(0)
  with np.load(tmp_path / 'a.npz') as data:
    tensors = {k: rng.normal(size=v.shape).astype(np.float32) * 0.1
               for k, v in data.items()}
  np.savez(tmp_path / 'b.npz', **tensors)
  pretrained.load_big_vision_npz(vit, tmp_path / 'b.npz')

  prefix = 'Transformer/encoderblock_2/MultiHeadDotProductAttention_1/'
  w = {n: tensors[prefix + n + '/kernel'] for n in ('query', 'key', 'value',
                                                     'out')}
  x = rng.normal(size=(5, 192)).astype(np.float32)
  # Query/key/value biases set to zero: the reference above has none.
  attention = vit.blocks[2].attn
  attention.qkv.bias[...] = jnp.zeros_like(attention.qkv.bias[...])
  expected = _attention_reference(x, w['query'], w['key'], w['value'],
                                  w['out'], tensors[prefix + 'out/bias'])
  np.testing.assert_allclose(attention(jnp.asarray(x)[None])[0], expected,
                             rtol=1e-4, atol=1e-5)


def _to_big_vision(tensors, *, scanned, prefix='params/'):
  """The AugReg layout rewritten as big_vision writes it."""
  out = {}
  cls_pos = tensors['Transformer/posembed_input/pos_embedding'][:, :1]
  for key, value in tensors.items():
    if key == 'Transformer/posembed_input/pos_embedding':
      out[prefix + 'pos_embedding'] = value[:, 1:]
      continue
    key = (key.replace('MultiHeadDotProductAttention_1', 'MultiHeadDotProductAttention_0')
           .replace('LayerNorm_2', 'LayerNorm_1').replace('MlpBlock_3', 'MlpBlock_0'))
    out[prefix + key] = value
  if scanned:
    stacked = {}
    for key in [k for k in out if 'encoderblock_' in k]:
      i = int(re.search(r'encoderblock_(\d+)', key).group(1))
      stacked.setdefault(re.sub(r'encoderblock_\d+', 'encoderblock', key),
                         {})[i] = out.pop(key)
    out.update({k: np.stack([v[i] for i in sorted(v)]) for k, v in stacked.items()})
  out[prefix + 'head/kernel'] = np.zeros((192, 10), np.float32)
  return out, cls_pos


@pytest.mark.parametrize('scanned', [False, True])
def test_npz_big_vision_layout(tmp_path, scanned):
  a = _vit(0)
  pretrained.save_big_vision_npz(a, tmp_path / 'augreg.npz')
  with np.load(tmp_path / 'augreg.npz') as data:
    tensors, cls_pos = _to_big_vision(dict(data), scanned=scanned)
  np.savez(tmp_path / 'bv.npz', **tensors)
  b = pretrained.load_big_vision_npz(_vit(1), tmp_path / 'bv.npz')
  before, after = _leaves(a), _leaves(b)
  for key in before:
    if key == "['pos_embed'].value":
      # big_vision gives the CLS token no position embedding.
      np.testing.assert_array_equal(after[key][:, 1:], before[key][:, 1:])
      np.testing.assert_array_equal(after[key][:, :1], 0 * cls_pos)
    else:
      np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_npz_stacked_layers_of_another_depth_are_refused(tmp_path):
  a = _vit(0)
  pretrained.save_big_vision_npz(a, tmp_path / 'augreg.npz')
  with np.load(tmp_path / 'augreg.npz') as data:
    tensors, _ = _to_big_vision(dict(data), scanned=True)
  deeper = {k: np.concatenate([v, v]) if '/encoderblock/' in k else v
            for k, v in tensors.items()}
  np.savez(tmp_path / 'deep.npz', **deeper)
  with pytest.raises(pretrained.CheckpointMismatchError,
                     match=r'(?s)shape mismatches: .*encoderblock/LayerNorm_0/'
                           r'\w+: file \(24, 192\), model expects \(12, 192\)'):
    pretrained.load_big_vision_npz(_vit(1), tmp_path / 'deep.npz')


def test_loaded_weights_are_jax_arrays(tmp_path):
  pretrained.save_big_vision_npz(_vit(0), tmp_path / 'a.npz')
  vit = pretrained.load_big_vision_npz(_vit(1), tmp_path / 'a.npz')
  for leaf in jax.tree.leaves(nnx.state(vit)):
    assert isinstance(leaf, jax.Array)


def test_npz_of_another_size_is_refused(tmp_path):
  pretrained.save_big_vision_npz(_vit(0), tmp_path / 'ti.npz')
  vit_s = models.ViT('vit_s', patch_size=4, image_size=8, rngs=nnx.Rngs(0))
  with pytest.raises(pretrained.CheckpointMismatchError,
                     match=r'(?s)vit_s .*shape mismatches: .*embedding/kernel: file '
                           r'\(4, 4, 3, 192\), model expects \(4, 4, 3, 384\)'):
    pretrained.load_big_vision_npz(vit_s, tmp_path / 'ti.npz')


def test_npz_that_is_not_a_vit_is_refused(tmp_path):
  np.savez(tmp_path / 'x.npz', weights=np.zeros(3))
  with pytest.raises(pretrained.CheckpointMismatchError,
                     match=r'not a big_vision / AugReg ViT .*\[\'weights\'\]'):
    pretrained.load_big_vision_npz(_vit(0), tmp_path / 'x.npz')
  with pytest.raises(TypeError, match='hold ViTs; got a ResNet'):
    pretrained.load_big_vision_npz(
        models.ResNet('resnet18', width=0.25, rngs=nnx.Rngs(0)),
        tmp_path / 'x.npz')
