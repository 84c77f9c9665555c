"""Pretrained weights: timm safetensors (ResNet, ViT) and big_vision / AugReg `.npz` (ViT).

Where to get the files (the paper's backbones):

- ResNet-50, ImageNet-1k: timm's `resnet50.tv_in1k` (torchvision's weights) or
  `resnet50.a1_in1k`: `model.safetensors` from huggingface.co/timm/<name>.
- ViT-B/16, ImageNet-21k: timm's `vit_base_patch16_224.augreg_in21k`
  (`model.safetensors`), or the original AugReg `.npz` from
  gs://vit_models/augreg/ (`B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`).

Any timm ResNet-18/34/50 or ViT-Ti/S/B checkpoint with the same architecture
works the same way. Reading safetensors needs the `safetensors` package, not
PyTorch.

Only the backbone is loaded: the classifier (`fc`, `head`) and PyTorch's
`num_batches_tracked` are skipped, and the embedding head keeps its fresh
initialisation, as does the small-image ResNet stem (`conv1`, `bn1`). Everything else must match exactly; otherwise a
`CheckpointMismatchError` names the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tcm_jax.models.encoder import Encoder
from tcm_jax.models.resnet import ResNet
from tcm_jax.models.vit import ViT

_SHOWN = 8  # keys listed per kind of mismatch


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not fit the model."""


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where one model array comes from: checkpoint keys, their shapes, a converter."""
  keys: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  convert: Callable[..., np.ndarray]
  index: int | None = None  # Layer of a stacked (scanned) array ...
  layers: int | None = None  # ... of this many layers.


def _backbone(model: nnx.Module) -> nnx.Module:
  backbone = model.backbone if isinstance(model, Encoder) else model
  if not isinstance(backbone, (ResNet, ViT)):
    raise TypeError(
        f'Expected an Encoder, ResNet or ViT, got {type(model).__name__}.')
  return backbone


def _model_arrays(module: nnx.Module) -> dict[tuple, tuple[int, ...]]:
  """Shape of every array of `module`, by path (`('layer1', 0, 'conv1', 'kernel')`)."""
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module))[0]
  return {_names(path): tuple(leaf.shape) for path, leaf in leaves}


def _names(path) -> tuple:
  return tuple(getattr(k, 'key', getattr(k, 'idx', None)) for k in path
               if not isinstance(k, jax.tree_util.GetAttrKey))


def _describe(model: nnx.Module) -> str:
  if isinstance(model, ResNet):
    return f'{model.arch} (width {model.width})'
  return f'{model.arch} (patch {model.patch_size}, {model.image_size} px)'


def _load(model: nnx.Module, sources: Mapping[tuple, _Source],
          tensors: Mapping[str, np.ndarray], *, path: str,
          ignored: Callable[[str], bool]) -> None:
  """Checks `tensors` against `sources`, then writes the converted arrays into `model`."""
  missing, mismatched, used = [], [], set()
  for source in sources.values():
    for key, shape in zip(source.keys, source.shapes):
      used.add(key)
      if key not in tensors:
        missing.append(key)
        continue
      if source.layers is not None:
        shape = (source.layers,) + shape
      if tensors[key].shape != shape:
        mismatched.append(f'{key}: file {tensors[key].shape}, model expects '
                          f'{shape}')
  unexpected = sorted(k for k in tensors if k not in used and not ignored(k))
  if missing or mismatched or unexpected:
    lines = [f'{path} does not fit this {_describe(model)}:']
    for title, items in (('missing keys', missing),
                         ('shape mismatches', mismatched),
                         ('unexpected keys', unexpected)):
      if items:
        shown = '; '.join(items[:_SHOWN])
        more = f'; ... ({len(items) - _SHOWN} more)' if len(items) > _SHOWN else ''
        lines.append(f'  {len(items)} {title}: {shown}{more}')
    lines.append('  (is it a checkpoint of the same architecture and size?)')
    raise CheckpointMismatchError('\n'.join(lines))

  def value(source):
    arrays = [np.asarray(tensors[k], np.float32) for k in source.keys]
    if source.index is not None:
      arrays = [a[source.index] for a in arrays]
    return jnp.asarray(source.convert(*arrays))

  new = {names: value(source) for names, source in sources.items()}
  state = nnx.state(model)
  state = jax.tree_util.tree_map_with_path(
      lambda p, leaf: new.get(_names(p), leaf), state)
  nnx.update(model, state)


# --- timm ---------------------------------------------------------------------

_TIMM_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
              'mean': 'running_mean', 'var': 'running_var'}


def _timm_key(names: tuple) -> str:
  *module, leaf = names
  renamed = []
  for name in module:
    if name == 'patch_embed':
      renamed += ['patch_embed', 'proj']
    elif renamed and renamed[-1] == 'downsample':
      renamed.append({'conv': '0', 'bn': '1'}[name])
    else:
      renamed.append(str(name))
  return '.'.join(renamed + [_TIMM_LEAF.get(leaf, leaf)])


def _timm_source(names: tuple, shape: tuple[int, ...]) -> _Source:
  key = _timm_key(names)
  if names[-1] == 'kernel' and len(shape) == 4:  # Conv: OIHW in PyTorch.
    torch_shape = (shape[3], shape[2], shape[0], shape[1])
    return _Source((key,), (torch_shape,), lambda w: w.transpose(2, 3, 1, 0))
  if names[-1] == 'kernel' and len(shape) == 2:  # Linear: (out, in).
    return _Source((key,), (shape[::-1],), lambda w: w.T)
  return _Source((key,), (shape,), lambda w: w)


_SMALL_STEM = ('conv1', 'bn1')


def _timm_ignored(key: str) -> bool:
  return (key.endswith('num_batches_tracked')
          or key.split('.')[0] in ('fc', 'head', 'head_drop', 'fc_norm'))


def timm_keys(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """The timm state-dict keys and shapes that `load_timm` reads into `model`.

  Examples:
    >>> from flax import nnx
    >>> from tcm_jax.models import ResNet, abstract
    >>> from tcm_jax.models.pretrained import timm_keys
    >>> keys = timm_keys(abstract(ResNet, 'resnet50', rngs=nnx.Rngs(0)))
    >>> keys['layer1.0.downsample.0.weight']
    (256, 64, 1, 1)
  """
  sources = _timm_sources(_backbone(model))
  return {s.keys[0]: s.shapes[0] for s in sources.values()}


def _timm_sources(backbone: nnx.Module) -> dict[tuple, _Source]:
  sources = {names: _timm_source(names, shape)
             for names, shape in _model_arrays(backbone).items()}
  if isinstance(backbone, ResNet) and backbone.small_images:
    # The 3x3 small-image stem has no pretrained counterpart, nor has the norm
    # after it (its statistics are those of the 7x7 stem): both keep their init.
    sources = {k: v for k, v in sources.items() if k[0] not in _SMALL_STEM}
  return sources


def load_timm(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
  """Loads a timm ResNet or ViT checkpoint (`.safetensors`) into `model`'s backbone.

  Args:
    model: an `Encoder` from `create_encoder`, or a `ResNet` / `ViT`.
    path: a timm state dict saved with safetensors (for instance the
      `model.safetensors` of huggingface.co/timm/resnet50.tv_in1k).

  Returns:
    `model`, updated in place.

  Raises:
    CheckpointMismatchError: keys missing from the file, keys the model has no
      place for, or shapes that differ, each listed with the shapes.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from flax import nnx
    >>> from safetensors.numpy import save_file
    >>> from tcm_jax.models import create_encoder
    >>> from tcm_jax.models.pretrained import load_timm, timm_keys
    >>> encoder = create_encoder({'name': 'resnet18'}, rngs=nnx.Rngs(0))
    >>> path = os.path.join(tempfile.mkdtemp(), 'model.safetensors')
    >>> save_file({k: np.full(s, 0.5, np.float32)
    ...            for k, s in timm_keys(encoder).items()}, path)
    >>> float(load_timm(encoder, path).backbone.layer4[1].bn2.var[0])
    0.5
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  backbone = _backbone(model)
  path = os.fspath(path)
  skip_stem = isinstance(backbone, ResNet) and backbone.small_images
  _load(backbone, _timm_sources(backbone), load_file(path), path=path,
        ignored=lambda key: _timm_ignored(key) or (
            skip_stem and key.split('.')[0] in _SMALL_STEM))
  return model


# --- big_vision / AugReg .npz ---------------------------------------------------

_AUGREG = {'attention': 'MultiHeadDotProductAttention_1', 'norm2': 'LayerNorm_2',
           'mlp': 'MlpBlock_3'}
_BIG_VISION = {'attention': 'MultiHeadDotProductAttention_0',
               'norm2': 'LayerNorm_1', 'mlp': 'MlpBlock_0'}
_NPZ_PREFIXES = ('', 'params/', 'opt/target/', 'params/img/')


def _npz_prefix(tensors: Mapping[str, np.ndarray], path: str) -> str:
  for prefix in _NPZ_PREFIXES:
    if f'{prefix}embedding/kernel' in tensors:
      return prefix
  raise CheckpointMismatchError(
      f'{path} is not a big_vision / AugReg ViT checkpoint: no '
      f'"embedding/kernel" under any of the prefixes {list(_NPZ_PREFIXES)}; '
      f'first keys: {sorted(tensors)[:_SHOWN]}.')


def _npz_sources(vit: ViT, tensors: Mapping[str, np.ndarray], prefix: str
                 ) -> dict[tuple, _Source]:
  """Our ViT's arrays from the keys of an AugReg or big_vision checkpoint."""
  shapes = _model_arrays(vit)
  width = vit.num_features
  heads = vit.blocks[0].attn.num_heads
  head_dim = width // heads
  big_vision = f'{prefix}pos_embedding' in tensors
  layout = _BIG_VISION if big_vision else _AUGREG
  scanned = f'{prefix}Transformer/encoderblock/LayerNorm_0/scale' in tensors

  def same(names, key):
    return _Source((prefix + key,), (shapes[names],), lambda w: w)

  sources = {
      ('patch_embed', 'kernel'): same(('patch_embed', 'kernel'),
                                      'embedding/kernel'),
      ('patch_embed', 'bias'): same(('patch_embed', 'bias'), 'embedding/bias'),
      ('cls_token',): same(('cls_token',), 'cls'),
      ('norm', 'scale'): same(('norm', 'scale'), 'Transformer/encoder_norm/scale'),
      ('norm', 'bias'): same(('norm', 'bias'), 'Transformer/encoder_norm/bias'),
  }
  if big_vision:  # Positions for the patches only: the CLS token has none.
    num_patches = shapes[('pos_embed',)][1] - 1
    sources[('pos_embed',)] = _Source(
        (prefix + 'pos_embedding',), ((1, num_patches, width),),
        lambda w: np.concatenate([np.zeros((1, 1, width), w.dtype), w], 1))
  else:
    sources[('pos_embed',)] = same(('pos_embed',),
                                   'Transformer/posembed_input/pos_embedding')

  qkv_kernel = lambda q, k, v: np.concatenate(
      [a.reshape(width, width) for a in (q, k, v)], axis=1)
  qkv_bias = lambda q, k, v: np.concatenate([a.reshape(-1) for a in (q, k, v)])
  for i in range(len(vit.blocks)):
    block = f'{prefix}Transformer/encoderblock{"" if scanned else f"_{i}"}/'
    index = i if scanned else None
    attention = block + layout['attention'] + '/'
    mlp = block + layout['mlp'] + '/'

    def source(keys, key_shapes, convert):
      return _Source(tuple(keys), tuple(key_shapes), convert, index,
                     len(vit.blocks) if scanned else None)

    entries = {
        ('norm1', 'scale'): source([block + 'LayerNorm_0/scale'], [(width,)],
                                   lambda w: w),
        ('norm1', 'bias'): source([block + 'LayerNorm_0/bias'], [(width,)],
                                  lambda w: w),
        ('norm2', 'scale'): source([block + layout['norm2'] + '/scale'],
                                   [(width,)], lambda w: w),
        ('norm2', 'bias'): source([block + layout['norm2'] + '/bias'],
                                  [(width,)], lambda w: w),
        ('attn', 'qkv', 'kernel'): source(
            [attention + n + '/kernel' for n in ('query', 'key', 'value')],
            [(width, heads, head_dim)] * 3, qkv_kernel),
        ('attn', 'qkv', 'bias'): source(
            [attention + n + '/bias' for n in ('query', 'key', 'value')],
            [(heads, head_dim)] * 3, qkv_bias),
        ('attn', 'proj', 'kernel'): source(
            [attention + 'out/kernel'], [(heads, head_dim, width)],
            lambda w: w.reshape(width, width)),
        ('attn', 'proj', 'bias'): source([attention + 'out/bias'], [(width,)],
                                         lambda w: w),
    }
    for j, fc in enumerate(('fc1', 'fc2')):
      for leaf in ('kernel', 'bias'):
        entries[('mlp', fc, leaf)] = source(
            [mlp + f'Dense_{j}/{leaf}'],
            [shapes[('blocks', i, 'mlp', fc, leaf)]], lambda w: w)
    sources.update({('blocks', i) + k: v for k, v in entries.items()})
  return sources


def _npz_ignored(prefix: str) -> Callable[[str], bool]:
  def ignored(key):
    rest = key[len(prefix):] if key.startswith(prefix) else key
    return (not key.startswith(prefix)
            or re.match(r'(head|pre_logits|MAPHead_0)/', rest) is not None)
  return ignored


def load_big_vision_npz(model: nnx.Module, path: str | os.PathLike
                        ) -> nnx.Module:
  """Loads a ViT checkpoint in the big_vision / AugReg `.npz` layout into `model`.

  Reads the AugReg layout of google-research/vision_transformer
  (`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/...`) and
  big_vision's (`MultiHeadDotProductAttention_0`, position embeddings for the
  patches only, blocks unrolled or stacked under `encoderblock/`), under any
  of the prefixes '', 'params/', 'opt/target/', 'params/img/'. The separate
  query, key and value kernels are fused into the model's `qkv` layer.

  Args:
    model: an `Encoder` with a ViT backbone, or a `ViT`.
    path: the `.npz` file.

  Returns:
    `model`, updated in place.

  Raises:
    CheckpointMismatchError: as `load_timm`.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from flax import nnx
    >>> from tcm_jax.models import ViT
    >>> from tcm_jax.models.pretrained import (load_big_vision_npz,
    ...                                        save_big_vision_npz)
    >>> a = ViT('vit_ti', patch_size=4, image_size=16, rngs=nnx.Rngs(0))
    >>> b = ViT('vit_ti', patch_size=4, image_size=16, rngs=nnx.Rngs(1))
    >>> path = os.path.join(tempfile.mkdtemp(), 'vit.npz')
    >>> save_big_vision_npz(a, path)
    >>> _ = load_big_vision_npz(b, path)
    >>> bool(np.all(a.blocks[3].attn.qkv.kernel[...]
    ...             == b.blocks[3].attn.qkv.kernel[...]))
    True
  """
  vit = _backbone(model)
  if not isinstance(vit, ViT):
    raise TypeError(
        f'big_vision / AugReg checkpoints hold ViTs; got a '
        f'{type(vit).__name__}.')
  path = os.fspath(path)
  with np.load(path) as data:
    tensors = dict(data)
  prefix = _npz_prefix(tensors, path)
  _load(vit, _npz_sources(vit, tensors, prefix), tensors, path=path,
        ignored=_npz_ignored(prefix))
  return model


def save_big_vision_npz(model: nnx.Module, path: str | os.PathLike) -> None:
  """Writes `model`'s ViT backbone in the AugReg `.npz` layout `load_big_vision_npz` reads.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from flax import nnx
    >>> from tcm_jax.models import ViT
    >>> from tcm_jax.models.pretrained import save_big_vision_npz
    >>> path = os.path.join(tempfile.mkdtemp(), 'vit.npz')
    >>> save_big_vision_npz(
    ...     ViT('vit_ti', patch_size=4, image_size=8, rngs=nnx.Rngs(0)), path)
    >>> np.load(path)['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'].shape
    (192, 768)
  """
  vit = _backbone(model)
  if not isinstance(vit, ViT):
    raise TypeError(f'Only ViTs have an AugReg layout; got a '
                    f'{type(vit).__name__}.')
  state = nnx.state(vit)
  arrays = {_names(p): np.asarray(leaf) for p, leaf in
            jax.tree_util.tree_flatten_with_path(state)[0]}
  width = vit.num_features
  heads = vit.blocks[0].attn.num_heads
  out = {
      'embedding/kernel': arrays[('patch_embed', 'kernel')],
      'embedding/bias': arrays[('patch_embed', 'bias')],
      'cls': arrays[('cls_token',)],
      'Transformer/posembed_input/pos_embedding': arrays[('pos_embed',)],
      'Transformer/encoder_norm/scale': arrays[('norm', 'scale')],
      'Transformer/encoder_norm/bias': arrays[('norm', 'bias')],
  }
  for i in range(len(vit.blocks)):
    get = lambda *names, i=i: arrays[('blocks', i) + names]
    block = f'Transformer/encoderblock_{i}/'
    attention = block + _AUGREG['attention'] + '/'
    for norm, name in (('norm1', 'LayerNorm_0'), ('norm2', _AUGREG['norm2'])):
      out[block + name + '/scale'] = get(norm, 'scale')
      out[block + name + '/bias'] = get(norm, 'bias')
    kernels = np.split(get('attn', 'qkv', 'kernel'), 3, axis=1)
    biases = np.split(get('attn', 'qkv', 'bias'), 3)
    for n, kernel, bias in zip(('query', 'key', 'value'), kernels, biases):
      out[attention + n + '/kernel'] = kernel.reshape(width, heads, -1)
      out[attention + n + '/bias'] = bias.reshape(heads, -1)
    out[attention + 'out/kernel'] = get('attn', 'proj', 'kernel').reshape(
        heads, -1, width)
    out[attention + 'out/bias'] = get('attn', 'proj', 'bias')
    for j, fc in enumerate(('fc1', 'fc2')):
      for leaf in ('kernel', 'bias'):
        out[block + _AUGREG['mlp'] + f'/Dense_{j}/{leaf}'] = get('mlp', fc, leaf)
  np.savez(os.fspath(path), **out)
