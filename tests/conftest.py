"""Session fixtures and the two test lanes.

Lanes (markers registered in pytest.ini; ``make test`` runs both lanes, ``make test-fast``
runs ``-m "not slow and not multiprocess"``):

* ``multiprocess``: set here on every test of a module that uses
  :func:`tests.multiprocess.run_ranks` (found in the module's globals), so a module that
  spawns a gloo group needs no marker of its own.
* ``slow``: a module that starts torchrun, TorchX, a benchmark script or the CLI in a
  subprocess, or spends many seconds in one process. The modules owned next to this file
  say so with ``pytestmark = pytest.mark.slow``; the others are listed in
  ``SLOW_MODULES`` below.
"""

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, List

import pytest
import torch

from tests import multiprocess

TESTS = Path(__file__).resolve().parent

# Slow modules without a ``pytestmark`` of their own, relative to tests/.
SLOW_MODULES = {
    "distributed/test_checkpoint.py",  # torchrun runs, one killed with -9 and resumed
    "distributed/test_cpu_memory.py",  # the RSS of training in subprocesses
}


def _uses_run_ranks(module: ModuleType) -> bool:
    """Whether the module holds the multi-process helper (or its module) in its globals."""
    return any(v is multiprocess.run_ranks or v is multiprocess for v in vars(module).values())


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        module = item.getparent(pytest.Module)
        if module is None:
            continue
        if _uses_run_ranks(module.obj):
            item.add_marker(pytest.mark.multiprocess)
        if module.path.relative_to(TESTS).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the whole session, for generated data several modules share."""
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def small_data_config() -> Callable[..., Any]:
    """Factory of a small synthetic :class:`~torchrec_me.config.DataConfig`.

    Vocabularies of at most a few hundred ids and 4096 validation samples, so a model
    builds and a few steps run in well under a second; keyword arguments override.
    """
    from torchrec_me.config import DataConfig

    def make(**overrides: Any) -> DataConfig:
        return DataConfig(**{"cardinality_scale": 0.002, "val_samples": 4096, **overrides})

    return make


@pytest.fixture(scope="session")
def small_dataset(small_data_config: Callable[..., Any]) -> Any:
    """The synthetic Criteo-shaped dataset of ``small_data_config()``, built once."""
    from torchrec_me.data.synthetic import SyntheticCriteo

    return SyntheticCriteo(small_data_config())


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with 0: random test data without the global RNG."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def torch_seed() -> Iterator[int]:
    """Seed the global RNG with 0 for one test (module initialisers read it), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield 0
