"""The notebooks in colabs/: in sync with their sources, well formed, and run.

Every `colabs/<name>.py` (jupytext percent format, see `colabs/build.py`) is
checked and executed top to bottom in a fresh Python kernel of this
interpreter, with the small settings of `SMALL[name]` injected right after its
`parameters` cell (papermill style). A new notebook without an entry in
`SMALL` fails, so that none runs at its full, Colab-sized settings here.
"""

import ast
import pathlib
import re
import sys
import time

from IPython.core.inputtransformer2 import TransformerManager
import nbformat
import pytest

from tcm_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / 'colabs'
build = config_lib.load_module(str(COLABS / 'build.py'), 'colabs_build')
SOURCES = build.sources(COLABS)
NAMES = [source.stem for source in SOURCES]

# The synthetic images of configs/synthetic.py stand in for a TFDS dataset,
# with a ResNet-18 at width 1/4 in place of ResNet-50 (as tests/test_train.py
# shrinks the configs), for three steps.
_TINY_TRAINING = {
    'dataset.synthetic.num_classes': 16,
    'dataset.synthetic.images_per_class': 8,
    'dataset.synthetic.image_size': 40,
    'input.image_size': 32,
    'input.resize_size': 36,
    'input.classes_per_batch': 4,
    'input.samples_per_class': 4,
    'input.eval_batch_size': 32,
    'input.num_threads': 2,
    'model.name': 'resnet18',
    'model.width': 0.25,
    'model.embedding_size': 16,
    'model.dtype': 'float32',
    'train.num_steps': 3,
    'train.log_every_steps': 1,
    'train.checkpoint_every_steps': 0,
    'train.progress_bar': False,
}

# Per notebook: the values that replace its parameters for a quick run here.
SMALL = {
    'tcm_loss_quickstart': dict(NUM_STEPS=20, LOG_EVERY=5),
    # Its demo embeddings (the digits' pixels) are small already.
    'measure_threshold_consistency': dict(),
    'train_on_tfds': dict(
        CONFIG_FILE='configs/synthetic.py', CONFIG_ARG='resnet50',
        PREPARE_DATASET=False, PRETRAINED_REPO='',
        OVERRIDES=_TINY_TRAINING),
    'digits_toy': dict(NUM_STEPS=3),
}

# Per notebook: how many figures it draws (a run shows at least as many
# `image/png` outputs: `plt.show()` and `display(Image(...))`), and patterns
# (regular expressions, one line each, `re.MULTILINE`) its printed output must
# match: its key results, whatever their numbers.
FIGURES = {
    # the hard pairs' histogram, the training curves, the utility curves
    'tcm_loss_quickstart': 3,
    # the toy embeddings, the utility curves, FAR/FRR per class, the DET
    # curve, the calibration transfer, the report's
    'measure_threshold_consistency': 6,
    # the densities on the circle, the utility curves
    'digits_toy': 2,
    # the training curves, the report's utility curves
    'train_on_tfds': 2,
}
_NUMBER = r'-?[0-9.]+(e-?[0-9]+)?'
EXPECTED_OUTPUT = {
    'tcm_loss_quickstart': [
        r'^non-zero gradient exactly on the hard pairs: True$',
        rf'^multi_similarity_loss {_NUMBER} \+ tcm_loss {_NUMBER} = '
        rf'{_NUMBER}; objective: {_NUMBER}',
        rf'^ +hard_neg_fraction: {_NUMBER} at step 0 -> {_NUMBER} at step',
        rf'^Recall@1 {_NUMBER} +OPIS {_NUMBER} ',
    ],
    'measure_threshold_consistency': [
        rf'^OPIS: {_NUMBER}$',
        rf'^0.1-OPIS: {_NUMBER}$',
        rf'^per-class FRR: worst {_NUMBER}, best {_NUMBER}',
        r'^\| class \| mean utility \| FAR \| FRR \|$',
        rf'^TAR@FAR=0.01: {_NUMBER} \(threshold',
        rf'^EER {_NUMBER} at distance {_NUMBER}; ROC AUC {_NUMBER}$',
        rf'^target FAR 0.01: reached {_NUMBER} \+- {_NUMBER} over 2 folds',
        rf'^opis: {_NUMBER}, 95% interval \[{_NUMBER}, {_NUMBER}\]$',
        rf'^eer: {_NUMBER}, 95% interval',
    ],
    'digits_toy': [
        r'^metric +ArcFace +ArcFace \+ TCM$',
        rf'^opis +{_NUMBER} +{_NUMBER}$',
        rf'^ArcFace \+ TCM: threshold {_NUMBER} .*per-class FRR from',
        rf'^ArcFace: hard positives {_NUMBER}% of [0-9]+ positive pairs, '
        rf'hard negatives {_NUMBER}% of [0-9]+ negative pairs$',
    ],
    'train_on_tfds': [
        r'^\| metric \| model \|$',
        rf'^\| Recall@1 \| {_NUMBER} \|$',
        rf'^\| OPIS \| {_NUMBER} \|$',
    ],
}

CELL_TIMEOUT_S = 600
# Environment of the notebook kernel (added to this process's): figures go
# inline, as in Jupyter and Colab, whatever backend this process uses.
KERNEL_ENV = {'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
              'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}


def _notebook(name):
  return nbformat.read(COLABS / f'{name}.ipynb', as_version=4)


def _code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code']


def _parse(cell):
  """The cell's Python syntax tree (IPython's `!` and `%` lines translated)."""
  return ast.parse(TransformerManager().transform_cell(cell.source))


def _parameters_index(nb):
  indices = [i for i, cell in enumerate(nb.cells)
             if 'parameters' in cell.metadata.get('tags', [])]
  assert len(indices) == 1, f'want one cell tagged parameters, got {indices}'
  return indices[0]


def _assigned_names(tree):
  names = set()
  for node in tree.body:
    assert isinstance(node, (ast.Assign, ast.AnnAssign)), (
        'a parameters cell holds assignments only, got '
        f'{ast.unparse(node)!r}')
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    for target in targets:
      names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
  return names


def test_every_notebook_is_found():
  assert {'tcm_loss_quickstart', 'measure_threshold_consistency',
          'digits_toy', 'train_on_tfds'} <= set(NAMES)
  assert set(FIGURES) == set(EXPECTED_OUTPUT) == set(NAMES)


def _content(nb):
  """What a notebook holds, whatever tool version serialised it: metadata,
  then each cell's type, source and tags."""
  return (nbformat.from_dict(nb.metadata),
          [(cell.cell_type, cell.source, cell.metadata.get('tags', []))
           for cell in nb.cells])


@pytest.mark.parametrize('name', NAMES)
def test_notebook_has_the_content_of_its_source(name):
  # Compares content, not bytes: setup.cfg allows any jupytext >= 1.16 and
  # nbformat >= 5.10, and another version may serialise the same notebook a
  # little differently (the byte-for-byte check is the next test, with the
  # pinned versions). A source whose cells differ fails with any version.
  path = COLABS / f'{name}.ipynb'
  assert path.exists(), f'{path.name} missing: run python colabs/build.py'
  assert _content(_notebook(name)) == _content(
      build.notebook(COLABS / f'{name}.py')), (
          f'colabs/{name}.ipynb differs from its source: run '
          'python colabs/build.py')


def _pinned(package):
  """The version of `package` pinned in constraints.txt, or None."""
  text = (REPO / 'constraints.txt').read_text(encoding='utf-8')
  match = re.search(rf'^{re.escape(package)}==(\S+)', text, re.MULTILINE)
  return match and match.group(1)


def test_notebooks_are_byte_identical_to_build_output():
  import jupytext  # pylint: disable=import-outside-toplevel
  installed = {'jupytext': jupytext.__version__,
               'nbformat': nbformat.__version__}
  differing = {package: version for package, version in installed.items()
               if version != _pinned(package)}
  if differing:
    pytest.skip(f'{differing} installed, not the versions pinned in '
                'constraints.txt, which may write the notebooks differently; '
                'the content is still checked')
  stale = build.out_of_sync(COLABS)  # orphan .ipynb files included
  assert not stale, (f'out of sync with their .py sources: {stale}; run '
                     'python colabs/build.py')
  assert build.main(['--check']) == 0


@pytest.mark.parametrize('name', NAMES)
def test_notebook_opens_with_title_badge_and_colab_install(name):
  nb = _notebook(name)
  title = nb.cells[0]
  assert title.cell_type == 'markdown'
  lines = title.source.splitlines()
  assert lines[0].startswith('# '), 'the first cell starts with the title'
  assert lines[1] == build.badge(name)
  assert f'github/{build.GITHUB_REPO}/blob/main/colabs/{name}.ipynb' in lines[1]
  assert nb.metadata.kernelspec.name == 'python3'

  install = nb.cells[1]
  assert install.cell_type == 'code'
  tree = _parse(install)
  # `import os, sys`, then `if 'google.colab' in sys.modules:` (clone once,
  # install, chdir into the checkout) and one `elif` (from colabs/ in a local
  # checkout, chdir to the repository root), nothing else.
  assert [type(node) for node in tree.body] == [ast.Import, ast.If]
  on_colab = tree.body[1]
  assert ast.unparse(on_colab.test) == "'google.colab' in sys.modules"
  assert f'https://github.com/{build.GITHUB_REPO}' in install.source
  assert "if not os.path.isdir('/content/tcm_jax'):" in install.source
  assert len(on_colab.orelse) == 1 and isinstance(on_colab.orelse[0], ast.If)
  local = on_colab.orelse[0]
  assert ast.unparse(local.test) == "os.path.basename(os.getcwd()) == 'colabs'"
  assert [ast.unparse(node) for node in local.body] == ["os.chdir('..')"]
  assert not local.orelse


def test_every_notebook_has_the_same_install_cell():
  cells = {name: _notebook(name).cells[1].source for name in NAMES}
  assert len(set(cells.values())) == 1, (
      'the install cells differ: copy one into the others')


@pytest.mark.parametrize('name', NAMES)
def test_notebook_has_a_parameters_cell_before_any_work(name):
  nb = _notebook(name)
  index = _parameters_index(nb)
  assert nb.cells[index].cell_type == 'code'
  names = _assigned_names(_parse(nb.cells[index]))
  assert names, 'the parameters cell sets the notebook\'s knobs'
  for cell in nb.cells[2:index]:  # between the install and parameters cells
    if cell.cell_type == 'code':
      assert all(isinstance(node, (ast.Import, ast.ImportFrom))
                 for node in _parse(cell).body), (
                     f'work before the parameters cell: {cell.source!r}')


@pytest.mark.parametrize('name', NAMES)
def test_notebook_calls_the_library_and_defines_nothing(name):
  nb = _notebook(name)
  trees = [_parse(cell) for cell in _code_cells(nb)]
  imported = set()
  for tree in trees:
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported.add(node.module.split('.')[0])
      # Lambdas (one expression) are allowed; functions and classes are
      # logic that belongs in the library.
      assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                   ast.ClassDef)), (
                                       f'{name} defines {node.name!r}')
  assert 'tcm_jax' in imported


@pytest.mark.parametrize('name', NAMES)
def test_small_settings_name_existing_parameters(name):
  assert name in SMALL, (
      f'colabs/{name}.py has no small settings: add SMALL[{name!r}] in '
      'tests/test_colabs.py so that the test suite runs it quickly')
  nb = _notebook(name)
  parameters = _assigned_names(_parse(nb.cells[_parameters_index(nb)]))
  unknown = set(SMALL[name]) - parameters
  assert not unknown, f'not parameters of {name}: {sorted(unknown)}'


def _kernel_manager(tmp_path):
  """A kernel of this interpreter, whatever kernels Jupyter knows of."""
  from ipykernel import kernelspec  # pylint: disable=import-outside-toplevel
  from jupyter_client import AsyncKernelManager  # pylint: disable=import-outside-toplevel
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=import-outside-toplevel
  kernels, scratch = tmp_path / 'kernels', tmp_path / 'tmp'
  scratch.mkdir()
  # The notebooks' temporary folders go under tmp_path, removed by pytest.
  kernelspec.write_kernel_spec(str(kernels / 'python3'), overrides={
      'env': {**KERNEL_ENV, 'TMPDIR': str(scratch)}})
  specs = KernelSpecManager(kernel_dirs=[str(kernels)])
  assert specs.get_kernel_spec('python3').argv[0] == sys.executable
  return AsyncKernelManager(kernel_name='python3', kernel_spec_manager=specs)


def _written_files():
  """What a notebook might write into the repository: files other than
  sources (which someone may be editing meanwhile) at its top and in colabs/
  and configs/."""
  return {path.relative_to(REPO) for directory in (REPO, COLABS, REPO / 'configs')
          for path in directory.iterdir() if not path.name.startswith('.')
          and path.name != '__pycache__'
          and path.suffix not in ('.py', '.ipynb')}


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path):
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  from nbclient.exceptions import CellExecutionError  # pylint: disable=import-outside-toplevel
  assert name in SMALL, f'add SMALL[{name!r}] in tests/test_colabs.py'
  nb = _notebook(name)
  overrides = '\n'.join(f'{key} = {value!r}'
                        for key, value in SMALL[name].items())
  nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(
      '# Injected by tests/test_colabs.py: small settings\n' + overrides,
      metadata={'tags': ['injected-parameters']}))
  before = _written_files()
  client = NotebookClient(nb, km=_kernel_manager(tmp_path),
                          timeout=CELL_TIMEOUT_S, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO)}})
  start = time.perf_counter()
  try:
    client.execute()
  except CellExecutionError as error:
    pytest.fail(f'colabs/{name}.ipynb failed:\n{error}', pytrace=False)
  print(f'{name}: executed in {time.perf_counter() - start:.1f} s')
  assert _written_files() == before, 'the notebook wrote into the repository'
  # What the run showed: its figures and its key printed lines.
  outputs = [output for cell in _code_cells(nb) for output in cell.outputs]
  figures = sum('image/png' in output.get('data', {}) for output in outputs)
  assert figures >= FIGURES[name], (
      f'{figures} figures shown, want at least {FIGURES[name]}')
  printed = ''.join(output.text for output in outputs
                    if output.output_type == 'stream'
                    and output.name == 'stdout')
  missing = [pattern for pattern in EXPECTED_OUTPUT[name]
             if not re.search(pattern, printed, re.MULTILINE)]
  assert not missing, (f'not printed: {missing}; the output was:\n'
                       f'{printed[-4000:]}')
