"""The notebooks in colabs/: in sync with their sources, well formed, and run.

Every `colabs/<name>.py` (jupytext percent format, see `colabs/build.py`) is
checked and executed top to bottom in a fresh Python kernel of this
interpreter, with the small settings of `SMALL[name]` injected right after its
`parameters` cell (papermill style). A new notebook without an entry in
`SMALL` fails, so that none runs at its full, Colab-sized settings here.
"""

import ast
import importlib.util
import pathlib
import sys
import time

from IPython.core.inputtransformer2 import TransformerManager
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / 'colabs'


def _load_build():
  spec = importlib.util.spec_from_file_location('colabs_build',
                                                COLABS / 'build.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


build = _load_build()
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

CELL_TIMEOUT_S = 600
# Environment of the notebook kernel (added to this process's).
KERNEL_ENV = {'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2'}


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
          'train_on_tfds'} <= set(NAMES)


def test_notebooks_are_in_sync_with_their_sources():
  stale = build.out_of_sync(COLABS)
  assert not stale, (f'out of sync with their .py sources: {stale}; run '
                     'python colabs/build.py')


def test_build_check_exits_zero_when_in_sync():
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
  # `import sys`, then everything under `if 'google.colab' in sys.modules:`.
  assert [type(node) for node in tree.body] == [ast.Import, ast.If]
  assert ast.unparse(tree.body[1].test) == "'google.colab' in sys.modules"
  assert f'https://github.com/{build.GITHUB_REPO}' in install.source


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
  outputs = [output for cell in _code_cells(nb) for output in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  assert _written_files() == before, 'the notebook wrote into the repository'
