"""TorchX components for torchrec_me: ``train`` and ``benchmark``.

Both are thin wrappers around TorchX's builtin ``dist.ddp`` component, so every node
runs ``torchrun`` (c10d rendezvous on rank 0's host) and torchrun starts
``nproc_per_node`` workers. Run them from the repository root, e.g.::

    torchx run -s local_cwd launch/components.py:train -j 2x1 -- train.steps=20
    torchx run -s local_cwd launch/components.py:benchmark -j 1x2 -- --steps 50

Everything after ``--`` is passed unchanged to ``torchrec-me train`` (for ``train``)
or to ``benchmarks/throughput.py`` (for ``benchmark``). ``train`` with a run dir adds
``--resume``, so every attempt of a retried job continues from its newest checkpoint.
Resources default to the hardware asked for: the CPU image with 2 CPUs and 8 GiB per
node, or with ``gpu > 0`` the CUDA image with 8 CPUs and 64 GiB per GPU. See
``launch/README.md``.

This file must stay importable with only ``torchx`` installed (TorchX loads it by
path), and its component signatures must pass TorchX's component linter: only
``str/int/float/bool``, ``Optional[...]``, ``List[...]`` and ``Dict[...]`` from
``typing`` (no ``X | None``), a Google-style docstring with every argument.
"""

from typing import Dict, List, Optional, Tuple

import torchx.specs as specs
from torchx.components.dist import ddp, parse_nnodes

#: The image built from ``docker/Dockerfile.cpu`` (see ``docker/README.md``), the
#: default when ``gpu == 0``. The ``local_cwd`` scheduler ignores images and runs in
#: the current directory instead.
DEFAULT_IMAGE = "torchrec-me:cpu"
#: The image built from ``docker/Dockerfile.cuda``, the default when ``gpu > 0``.
CUDA_IMAGE = "torchrec-me:cuda"
#: Per node without GPUs: what a 2-worker CPU job needs (``launch/README.md``).
CPU_DEFAULT = 2
MEM_MB_DEFAULT = 8192
#: Per GPU of a node, when ``gpu > 0`` and ``cpu``/``memMB`` are not given: 8 GPUs ask
#: for 64 CPUs and 512 GiB, which fits the common 8-GPU nodes (96 or more vCPUs, 680 GB
#: or more) with room for the node's own reservation (``launch/README.md``).
CPUS_PER_GPU = 8
MEM_MB_PER_GPU = 64 * 1024
#: The module torchrun starts on every worker (``python -m torchrec_me.train``).
TRAIN_MODULE = "torchrec_me.train"
#: The benchmark script, relative to the repository root (the image's WORKDIR).
BENCHMARK_SCRIPT = "benchmarks/throughput.py"


def _base_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    out = {"PYTHONUNBUFFERED": "1"}
    out.update(env or {})
    return out


def _resources(j: str, gpu: int, cpu: Optional[int], memMB: Optional[int], image: Optional[str]) -> Tuple[int, int, str]:
    """``(cpu, memMB, image)`` per node: the given values, or the defaults for ``gpu``."""
    nproc = parse_nnodes(j)[2]
    if gpu < 0:
        raise ValueError(f"gpu must be >= 0, got {gpu}")
    if 0 < gpu < nproc:
        raise ValueError(f"-j {j} starts {nproc} workers per node but --gpu is {gpu}: each worker needs its own GPU")
    if gpu == 0:
        return (CPU_DEFAULT if cpu is None else cpu, MEM_MB_DEFAULT if memMB is None else memMB, image or DEFAULT_IMAGE)
    cpus = CPUS_PER_GPU * gpu if cpu is None else cpu
    return (cpus, MEM_MB_PER_GPU * gpu if memMB is None else memMB, image or CUDA_IMAGE)


def _gives_run_dir(script_args: Tuple[str, ...]) -> bool:
    """Whether the arguments after ``--`` name a run dir (``--run-dir D`` or ``--run-dir=D``)."""
    return any(a == "--run-dir" or a.startswith("--run-dir=") for a in script_args)


def _restarts_in_place(env: Dict[str, str], j: str, max_retries: int) -> None:
    """On one node, let torchrun itself restart failed workers ``max_retries`` times.

    torchrun reads ``--max-restarts`` from ``PET_MAX_RESTARTS``. A restart in place takes
    seconds and works under every scheduler (``local_cwd`` has no retries of its own).
    Across nodes the scheduler's retries restart the whole job instead: torchrun's
    restart counts differ between the nodes after an in-place restart (only the failed
    node counts it), and the process group is scoped by that count.
    """
    if max_retries > 0 and parse_nnodes(j)[1] == 1:
        env.setdefault("PET_MAX_RESTARTS", str(max_retries))


def train(
    *script_args: str,
    config: Optional[str] = None,
    j: str = "1x2",
    image: Optional[str] = None,
    name: str = "torchrec_me/train",
    h: Optional[str] = None,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
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

    Fault tolerance: with a run dir (``run_dir``, or ``--run-dir`` after ``--``) every
    attempt runs with ``--resume``, so a retried job continues from the newest intact
    checkpoint (a first attempt without one starts from step 0); ``max_retries > 0``
    therefore needs a run dir. Checkpoint often enough (``train.checkpoint_every=N``)
    that a retry loses little. On one node torchrun also restarts failed workers in
    place, ``max_retries`` times, before the scheduler's own retries.

    Args:
        script_args: arguments after ``--``, passed to ``torchrec-me train`` as they are
            (``KEY=VALUE`` overrides such as ``train.steps=20``, or its options)
        config: YAML config file, relative to the working directory (``--config``)
        j: {nnodes}x{nproc_per_node} (or [{min_nnodes}:]{nnodes}x{nproc_per_node} for elastic)
        image: docker image with torchrec_me installed (ignored by ``local_cwd``);
            default ``torchrec-me:cpu``, or ``torchrec-me:cuda`` when gpu > 0
        name: job name, ``{experimentname}/{runname}``, ``{experimentname}/`` or ``{runname}``
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        cpu: number of cpus per replica (node); default 2, or 8 per GPU when gpu > 0
        gpu: number of gpus per replica; must be at least nproc_per_node when > 0
        memMB: cpu memory in MB per replica; default 8192, or 65536 per GPU when gpu > 0
        run_dir: checkpoint/run directory (``--run-dir``: resolved config, log, metrics,
            checkpoints); every attempt resumes from it (``--resume``)
        metrics_out: write the final metrics JSON here (``--metrics-out``)
        progress: show the tqdm progress bar (off by default: it floods job logs)
        env: environment variables for every worker (e.g. ``OMP_NUM_THREADS=1,LOGLEVEL=INFO``)
        max_retries: retries of a failed job (the scheduler's; on one node also
            torchrun's in-place restarts); needs run_dir
        rdzv_port: port on rank 0's host for the c10d rendezvous store (multi-node only;
            a single node uses a free random port)
        rdzv_backend: torchrun rendezvous backend (``c10d``, ``static``, ``etcd``...)
        mounts: mounts for container schedulers, e.g.
            ``type=bind,src=/data,dst=/data[,readonly]``
        debug: enable TorchX's preset torch.distributed debug environment variables
    """
    resume = bool(run_dir) or _gives_run_dir(script_args)
    if max_retries > 0 and not resume:
        raise ValueError(
            f"max_retries={max_retries} needs --run_dir: a retried job resumes from the checkpoints there, and "
            "without one every retry would start again from step 0"
        )
    cpu, memMB, image = _resources(j, gpu, cpu, memMB, image)
    env = _base_env(env)
    _restarts_in_place(env, j, max_retries)
    train_args: List[str] = []
    if config:
        train_args += ["--config", config]
    if run_dir:
        train_args += ["--run-dir", run_dir]
    if resume and "--resume" not in script_args:
        train_args += ["--resume"]
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
        env=env,
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
    image: Optional[str] = None,
    name: str = "torchrec_me/benchmark",
    h: Optional[str] = None,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
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
        image: docker image with torchrec_me installed (ignored by ``local_cwd``);
            default ``torchrec-me:cpu``, or ``torchrec-me:cuda`` when gpu > 0
        name: job name, ``{experimentname}/{runname}``, ``{experimentname}/`` or ``{runname}``
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        cpu: number of cpus per replica (node); default 2, or 8 per GPU when gpu > 0
        gpu: number of gpus per replica; must be at least nproc_per_node when > 0
        memMB: cpu memory in MB per replica; default 8192, or 65536 per GPU when gpu > 0
        env: environment variables for every worker (e.g. ``OMP_NUM_THREADS=1``)
        max_retries: the number of scheduler retries allowed
        rdzv_port: port on rank 0's host for the c10d rendezvous store (multi-node only;
            a single node uses a free random port)
        rdzv_backend: torchrun rendezvous backend (``c10d``, ``static``, ``etcd``...)
        mounts: mounts for container schedulers, e.g.
            ``type=bind,src=/data,dst=/data[,readonly]``
        debug: enable TorchX's preset torch.distributed debug environment variables
    """
    cpu, memMB, image = _resources(j, gpu, cpu, memMB, image)
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


def sweep(
    grid: str,
    out: str,
    slots: int = 1,
    nproc_per_cell: int = 1,
    cell_retries: int = 1,
    max_minutes: Optional[float] = None,
    image: Optional[str] = None,
    name: str = "torchrec_me/sweep",
    h: Optional[str] = None,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """A scaling sweep (``torchrec-me sweep``) as one job on one node.

    The job runs the sweep driver, which trains the grid's cells in ``slots`` parallel
    slots of ``nproc_per_cell`` ranks each (torchrun when > 1) into ``out`` (a path on
    storage the node shares with you, e.g. a mount). The sweep is resumable, so a
    retried job (``max_retries``) skips the finished cells and resumes the cut-off ones
    from their checkpoints. Split a large grid into several grid files and submit one
    job each to run them on several nodes at once. Example:
    ``torchx run -s local_cwd launch/components.py:sweep --grid benchmarks/scaling/tiny.yaml --out runs/tiny``.

    Args:
        grid: the grid file, relative to the working directory / image WORKDIR
        out: the sweep directory (``cells/``, ``results.parquet``)
        slots: cells run at once
        nproc_per_cell: ranks per cell
        cell_retries: extra attempts of a failed cell before it is recorded as failed
        max_minutes: start no new cell after this many minutes (submit again to go on)
        image: docker image with torchrec_me installed (ignored by ``local_cwd``);
            default ``torchrec-me:cpu``, or ``torchrec-me:cuda`` when gpu > 0
        name: job name, ``{experimentname}/{runname}``, ``{experimentname}/`` or ``{runname}``
        h: a registered named resource; takes precedence over cpu, gpu and memMB
        cpu: number of cpus of the node; default 2, or 8 per GPU when gpu > 0
        gpu: number of gpus of the node; at least slots x nproc_per_cell when > 0
        memMB: cpu memory in MB; default 8192, or 65536 per GPU when gpu > 0
        env: environment variables of the driver and its cells
        max_retries: scheduler retries of the whole sweep (each resumes it)
        mounts: mounts for container schedulers, e.g.
            ``type=bind,src=/data,dst=/data[,readonly]``
    """
    if 0 < gpu < slots * nproc_per_cell:
        raise ValueError(f"gpu={gpu}: {slots} slots x {nproc_per_cell} ranks need one GPU each")
    cpu, memMB, image = _resources("1x1", gpu, cpu, memMB, image)
    args = ["-m", "torchrec_me.cli", "sweep", "--grid", grid, "--out", out, "--slots", str(slots),
            "--nproc-per-cell", str(nproc_per_cell), "--retries", str(cell_retries)]  # fmt: skip
    if max_minutes is not None:
        args += ["--max-minutes", str(max_minutes)]
    resource = specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h)
    role = specs.Role(
        name="sweep", image=image, entrypoint="python", args=args, env=_base_env(env), resource=resource,
        max_retries=max_retries, mounts=specs.parse_mounts(mounts) if mounts else [],
    )  # fmt: skip
    return specs.AppDef(name=name.split("/")[-1] or "sweep", roles=[role])
