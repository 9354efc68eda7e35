"""TorchX components for torchrec_me: ``train`` and ``benchmark``.

Both are thin wrappers around TorchX's builtin ``dist.ddp`` component, so every node
runs ``torchrun`` (c10d rendezvous on rank 0's host) and torchrun starts
``nproc_per_node`` workers. Run them from the repository root, e.g.::

    torchx run -s local_cwd launch/components.py:train -j 2x1 -- train.steps=20
    torchx run -s local_cwd launch/components.py:benchmark -j 1x2 -- --steps 50

Everything after ``--`` is passed unchanged to ``torchrec-me train`` (for ``train``)
or to ``benchmarks/throughput.py`` (for ``benchmark``). See ``launch/README.md``.

This file must stay importable with only ``torchx`` installed (TorchX loads it by
path), and its component signatures must pass TorchX's component linter: only
``str/int/float/bool``, ``Optional[...]``, ``List[...]`` and ``Dict[...]`` from
``typing`` (no ``X | None``), a Google-style docstring with every argument.
"""

from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

#: The image built from ``docker/Dockerfile.cpu`` (see ``docker/README.md``). The
#: ``local_cwd`` scheduler ignores it and runs in the current directory instead.
DEFAULT_IMAGE = "torchrec-me:cpu"
#: The module torchrun starts on every worker (``python -m torchrec_me.train``).
TRAIN_MODULE = "torchrec_me.train"
#: The benchmark script, relative to the repository root (the image's WORKDIR).
BENCHMARK_SCRIPT = "benchmarks/throughput.py"


def _base_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    out = {"PYTHONUNBUFFERED": "1"}
    out.update(env or {})
    return out


def train(
    *script_args: str,
    config: Optional[str] = None,
    j: str = "1x2",
    image: str = DEFAULT_IMAGE,
    name: str = "torchrec_me/train",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    run_dir: Optional[str] = None,
    metrics_out: Optional[str] = None,
    progress: bool = False,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    mounts: Optional[List[str]] = None,
    debug: bool = False,
) -> specs.AppDef:
    """Distributed training of a multi-embedding model (``torchrec-me train`` under torchrun).

    Each of the ``nnodes`` replicas runs ``torchrun ... -m torchrec_me.train`` with
    ``nproc_per_node`` workers; the workers join one process group (gloo on CPU, nccl
    on GPU) and rank 0 prints the sharding plan and the validation AUC. Example:
    ``torchx run -s local_cwd launch/components.py:train -j 2x1 -- train.steps=20``.

    Args:
        script_args: arguments after ``--``, passed to ``torchrec-me train`` as they are
            (``KEY=VALUE`` overrides such as ``train.steps=20``, or its options)
        config: YAML config file, relative to the working directory (``--config``)
        j: {nnodes}x{nproc_per_node} (or [{min_nnodes}:]{nnodes}x{nproc_per_node} for elastic)
        image: docker image with torchrec_me installed (ignored by ``local_cwd``)
        name: job name, ``{experimentname}/{runname}``, ``{experimentname}/`` or ``{runname}``
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        cpu: number of cpus per replica (node)
        gpu: number of gpus per replica; nproc_per_node must not exceed it on GPU hosts
        memMB: cpu memory in MB per replica
        run_dir: checkpoint/run directory (``--run-dir``: resolved config, log, metrics)
        metrics_out: write the final metrics JSON here (``--metrics-out``)
        progress: show the tqdm progress bar (off by default: it floods job logs)
        env: environment variables for every worker (e.g. ``OMP_NUM_THREADS=1,LOGLEVEL=INFO``)
        max_retries: the number of scheduler retries allowed
        rdzv_port: port on rank 0's host for the c10d rendezvous store (multi-node only;
            a single node uses a free random port)
        rdzv_backend: torchrun rendezvous backend (``c10d``, ``static``, ``etcd``...)
        mounts: mounts for container schedulers, e.g.
            ``type=bind,src=/data,dst=/data[,readonly]``
        debug: enable TorchX's preset torch.distributed debug environment variables
    """
    train_args: List[str] = []
    if config:
        train_args += ["--config", config]
    if run_dir:
        train_args += ["--run-dir", run_dir]
    if metrics_out:
        train_args += ["--metrics-out", metrics_out]
    if not progress:
        train_args += ["--no-progress"]
    # Options first: argparse cannot take options between two runs of positionals.
    train_args += list(script_args)
    return ddp(
        *train_args,
        m=TRAIN_MODULE,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=_base_env(env),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        rdzv_backend=rdzv_backend,
        mounts=mounts,
        debug=debug,
    )


def benchmark(
    *script_args: str,
    script: str = BENCHMARK_SCRIPT,
    j: str = "1x2",
    image: str = DEFAULT_IMAGE,
    name: str = "torchrec_me/benchmark",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    mounts: Optional[List[str]] = None,
    debug: bool = False,
) -> specs.AppDef:
    """Training-throughput benchmark (``python benchmarks/throughput.py`` under torchrun).

    Same topology as ``train``: every replica runs torchrun with ``nproc_per_node``
    workers executing the benchmark script. Example:
    ``torchx run -s local_cwd launch/components.py:benchmark -j 1x2 -- --steps 50``.

    Args:
        script_args: arguments after ``--``, passed to the benchmark script as they are
        script: the benchmark script, relative to the repository root / image WORKDIR
        j: {nnodes}x{nproc_per_node} (or [{min_nnodes}:]{nnodes}x{nproc_per_node} for elastic)
        image: docker image with torchrec_me installed (ignored by ``local_cwd``)
        name: job name, ``{experimentname}/{runname}``, ``{experimentname}/`` or ``{runname}``
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        cpu: number of cpus per replica (node)
        gpu: number of gpus per replica; nproc_per_node must not exceed it on GPU hosts
        memMB: cpu memory in MB per replica
        env: environment variables for every worker (e.g. ``OMP_NUM_THREADS=1``)
        max_retries: the number of scheduler retries allowed
        rdzv_port: port on rank 0's host for the c10d rendezvous store (multi-node only;
            a single node uses a free random port)
        rdzv_backend: torchrun rendezvous backend (``c10d``, ``static``, ``etcd``...)
        mounts: mounts for container schedulers, e.g.
            ``type=bind,src=/data,dst=/data[,readonly]``
        debug: enable TorchX's preset torch.distributed debug environment variables
    """
    return ddp(
        *script_args,
        script=script,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=_base_env(env),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        rdzv_backend=rdzv_backend,
        mounts=mounts,
        debug=debug,
    )
