"""TorchX components in launch/components.py.

* TorchX's own component checks (``ComponentTestCase.validate``: the file linter and
  the ``--help`` parser that ``torchx run`` builds from the signature and docstring).
* The AppDefs they build: replicas, torchrun command line, env, resources.

A real ``torchx run`` of the train component is in ``test_local_cwd_run.py`` (slow lane).
"""

import configparser
import importlib.util
import inspect
import shlex
from pathlib import Path
from types import ModuleType
from typing import List

import docstring_parser
import pytest
import torchx.specs as specs
from torchx.components.component_test_base import ComponentTestCase
from torchx.runner.config import get_config
from torchx.schedulers import get_scheduler_factories
from torchx.specs.builders import materialize_appdef
from torchx.specs.file_linter import validate as lint_component

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = REPO / "launch" / "components.py"


def _load_components() -> ModuleType:
    # Loaded by path, as `torchx run launch/components.py:train` does (launch/ is not
    # an installed package).
    spec = importlib.util.spec_from_file_location("torchrec_me_launch_components", COMPONENTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


components = _load_components()


# --------------------------------------------------------------------------- TorchX checks


class TestComponentsValidate(ComponentTestCase):
    """``torchx run launch/components.py:<fn> --help`` works for both components."""

    def test_train_validates(self) -> None:
        self.validate(components, "train")

    def test_benchmark_validates(self) -> None:
        self.validate(components, "benchmark")

    def test_sweep_validates(self) -> None:
        self.validate(components, "sweep")


@pytest.mark.parametrize("fn", ["train", "benchmark", "sweep"])
def test_component_linter_is_clean(fn: str) -> None:
    assert lint_component(str(COMPONENTS), fn) == []


@pytest.mark.parametrize("fn", ["train", "benchmark", "sweep"])
def test_every_argument_is_documented(fn: str) -> None:
    # TorchX silently fills a missing description; `--help` should not have holes.
    func = getattr(components, fn)
    doc = docstring_parser.parse(inspect.getdoc(func) or "")
    documented = {p.arg_name for p in doc.params if p.description}
    assert set(inspect.signature(func).parameters) - documented == set()
    assert doc.short_description


def test_torchxconfig_sections_and_default_component() -> None:
    cp = configparser.ConfigParser()
    assert cp.read(REPO / ".torchxconfig")
    assert {"local_cwd", "slurm", "kubernetes", "cli:run"} <= set(cp.sections())
    # every key is a real run option of its scheduler (TorchX skips unknown ones silently)
    factories = get_scheduler_factories()
    for scheduler in ("local_cwd", "slurm", "kubernetes"):
        opts = factories[scheduler](session_name="test").run_opts()
        for key in cp[scheduler]:
            assert opts.get(key) is not None, f"[{scheduler}] {key} is not a {scheduler} run option"
    # what `torchx run` with no component name resolves to
    assert get_config(prefix="cli", name="run", key="component", dirs=[str(REPO)]) == "launch/components.py:train"
    path, _, fn = cp["cli:run"]["component"].partition(":")
    assert (REPO / path).resolve() == COMPONENTS and callable(getattr(components, fn))


# --------------------------------------------------------------------------- AppDefs


def _role(app: specs.AppDef) -> specs.Role:
    assert len(app.roles) == 1, app.roles
    return app.roles[0]


def _torchrun_cmd(role: specs.Role, replica_id: int = 0) -> List[str]:
    """The torchrun command line ddp wraps in ``bash -c``, with TorchX's macros
    substituted the way the local schedulers do (``rank0_env=TORCHX_RANK0_HOST``)."""
    values = specs.macros.Values(img_root="", app_id="app-1", replica_id=str(replica_id), rank0_env="TORCHX_RANK0_HOST")
    role = values.apply(role)
    assert role.entrypoint == "bash"
    assert role.args[0] == "-c"
    return shlex.split(role.args[1])


def _flag(cmd: List[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize("j,nnodes,nproc", [("1x2", 1, 2), ("2x1", 2, 1), ("3x4", 3, 4)])
def test_train_topology(j: str, nnodes: int, nproc: int) -> None:
    role = _role(components.train(j=j))
    assert role.num_replicas == nnodes
    assert role.min_replicas == nnodes
    cmd = _torchrun_cmd(role)
    assert cmd[0] == "torchrun"
    assert _flag(cmd, "--nnodes") == str(nnodes)
    assert _flag(cmd, "--nproc_per_node") == str(nproc)
    assert _flag(cmd, "--rdzv_backend") == "c10d"
    if nnodes == 1:
        assert _flag(cmd, "--rdzv_endpoint") == "localhost:0"
    else:
        # bash expands it on each node; local_cwd sets TORCHX_RANK0_HOST=localhost
        assert _flag(cmd, "--rdzv_endpoint") == "${TORCHX_RANK0_HOST:=localhost}:29500"
    assert _flag(cmd, "--rdzv_id") == "app-1"


def test_train_default_is_one_node_two_workers() -> None:
    role = _role(components.train())
    cmd = _torchrun_cmd(role)
    assert role.num_replicas == 1 and _flag(cmd, "--nproc_per_node") == "2"


def test_train_runs_module_with_overrides_and_options() -> None:
    app = components.train(
        "train.steps=20",
        "model.num_sets=2",
        config="configs/default.yaml",
        run_dir="/ckpt/run1",
        metrics_out="/ckpt/run1/m.json",
    )
    cmd = _torchrun_cmd(_role(app))
    i = cmd.index("-m")
    assert cmd[i + 1] == "torchrec_me.train"
    train_args = cmd[i + 2 :]
    assert train_args == [
        "--config",
        "configs/default.yaml",
        "--run-dir",
        "/ckpt/run1",
        "--resume",
        "--metrics-out",
        "/ckpt/run1/m.json",
        "--no-progress",
        "train.steps=20",
        "model.num_sets=2",
    ]
    assert app.name == "train"


def test_train_progress_flag_and_quoting() -> None:
    # a value with a space must survive bash -c as one argument
    cmd = _torchrun_cmd(_role(components.train("train.set_dims=[8, 16]", progress=True)))
    assert "--no-progress" not in cmd
    assert cmd[-1] == "train.set_dims=[8, 16]"


def test_train_env_resources_retries_rdzv() -> None:
    role = _role(
        components.train(
            j="2x4",
            env={"OMP_NUM_THREADS": "1", "FOO": "bar"},
            cpu=8,
            gpu=4,
            memMB=32768,
            max_retries=3,
            run_dir="/ckpt/run2",
            rdzv_port=29999,
            image="registry.example/torchrec-me:cuda",
        )
    )
    assert role.env["OMP_NUM_THREADS"] == "1"
    assert role.env["FOO"] == "bar"
    assert role.env["PYTHONUNBUFFERED"] == "1"
    assert role.resource.cpu == 8
    assert role.resource.gpu == 4
    assert role.resource.memMB == 32768
    assert role.max_retries == 3
    assert role.image == "registry.example/torchrec-me:cuda"
    assert role.port_map == {"c10d": 29999}
    assert _flag(_torchrun_cmd(role), "--rdzv_endpoint").endswith(":29999")


def test_train_named_resource_wins() -> None:
    role = _role(components.train(h="aws_m5.2xlarge", cpu=1, memMB=10))
    assert role.resource == specs.named_resources["aws_m5.2xlarge"]


def test_train_static_rendezvous_passes_node_rank() -> None:
    role = _role(components.train(j="2x1", rdzv_backend="static"))
    for node in (0, 1):
        cmd = _torchrun_cmd(role, replica_id=node)
        assert _flag(cmd, "--rdzv_backend") == "static"
        assert _flag(cmd, "--node_rank") == str(node)


def test_train_defaults() -> None:
    role = _role(components.train())
    assert role.image == components.DEFAULT_IMAGE == "torchrec-me:cpu"
    assert role.max_retries == 0
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (2, 0, 8192)


def test_benchmark_runs_script_with_args() -> None:
    app = components.benchmark("--steps", "50", j="2x2", env={"A": "1"})
    role = _role(app)
    assert role.num_replicas == 2
    cmd = _torchrun_cmd(role)
    assert _flag(cmd, "--nproc_per_node") == "2"
    assert "-m" not in cmd
    i = cmd.index("benchmarks/throughput.py")
    assert cmd[i + 1 :] == ["--steps", "50"]
    assert role.env["A"] == "1"
    assert role.name == "throughput"


def test_cli_parsing_passes_everything_after_double_dash() -> None:
    """What ``torchx run ... launch/components.py:train -j 2x1 -- a=1 --run-dir d`` builds."""
    app = materialize_appdef(
        components.train,
        ["-j", "2x1", "--env", "A=1,B=2", "--", "train.steps=20", "--run-dir", "d"],
    )
    role = _role(app)
    assert role.num_replicas == 2
    assert role.env["A"] == "1" and role.env["B"] == "2"
    cmd = _torchrun_cmd(role)
    assert cmd[cmd.index("torchrec_me.train") + 1 :] == ["--resume", "--no-progress", "train.steps=20", "--run-dir", "d"]


def test_sweep_runs_the_sweep_driver_on_one_node() -> None:
    app = components.sweep("g.yaml", "runs/s", slots=2, nproc_per_cell=2, max_minutes=30.0, max_retries=2)
    (role,) = app.roles
    assert role.entrypoint == "python" and role.num_replicas == 1 and role.max_retries == 2
    assert role.args == ["-m", "torchrec_me.cli", "sweep", "--grid", "g.yaml", "--out", "runs/s", "--slots", "2",
                         "--nproc-per-cell", "2", "--retries", "1", "--max-minutes", "30.0"]  # fmt: skip
    assert (role.resource.cpu, role.resource.memMB, role.image) == (components.CPU_DEFAULT, components.MEM_MB_DEFAULT, components.DEFAULT_IMAGE)
    with pytest.raises(ValueError, match="one GPU each"):
        components.sweep("g.yaml", "o", slots=2, gpu=1)
