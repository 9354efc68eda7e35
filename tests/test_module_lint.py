"""TorchRec's module-linter rules on every public ``nn.Module`` of ``modules/`` and ``models/``.

``torchrec/linter/module_linter.py`` (TorchRec's repository; not in the wheel) checks
that a module class has a docstring with a runnable example, describes its constructor
and ``forward`` arguments, and takes at most 5 constructor arguments. Its text markers
(``Constructor Args:``, ``>>>``) are not the ones TorchRec's own modules use, so the
rules are applied here in the form of ``torchrec/modules/*.py``:

* a class docstring with an ``Args:`` section naming every constructor argument as
  ``name (Type): meaning``, and an ``Example::`` block;
* a ``forward`` docstring with ``Args:`` naming every argument and a ``Returns:``;
* at most 5 constructor arguments, unless one of them is a config object (a dataclass);
* every ``Example::`` block of these modules runs.
"""

import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap
import typing
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

import pytest
from torch import nn

import torchrec_me.models
import torchrec_me.modules

MAX_NUM_ARGS_IN_MODULE_CTOR = 5  # torchrec/linter/module_linter.py
PACKAGES = (torchrec_me.modules, torchrec_me.models)


def _submodules() -> List[ModuleType]:
    mods: List[ModuleType] = []
    for package in PACKAGES:
        mods.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            mods.append(importlib.import_module(info.name))
    return mods


def _public_classes(module_type: type = nn.Module) -> List[Tuple[str, type]]:
    """``(qualified name, class)`` of the public classes defined in the two packages."""
    found: Dict[str, type] = {}
    for mod in _submodules():
        for name, cls in vars(mod).items():
            if inspect.isclass(cls) and cls.__module__ == mod.__name__ and not name.startswith("_"):
                if issubclass(cls, module_type):
                    found[f"{mod.__name__}.{name}"] = cls
    return sorted(found.items())


def _section(doc: str, title: str) -> str:
    """The indented body under ``title`` (e.g. ``Args:``) in a docstring, or ''."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == title:
            body = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and not nxt.startswith((" ", "\t")):
                    break
                body.append(nxt)
            return "\n".join(body)
    return ""


def _ctor_params(cls: type) -> List[inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _is_config(cls: type, param: inspect.Parameter) -> bool:
    hints = typing.get_type_hints(cls.__init__)
    hint = hints.get(param.name)
    candidates = [hint, *typing.get_args(hint)]  # Optional[Config] too
    return any(inspect.isclass(c) and dataclasses.is_dataclass(c) for c in candidates)


def lint_module_class(cls: type) -> List[str]:
    """The rule violations of one module class, as messages ([] when it passes)."""
    errors: List[str] = []
    doc = cls.__doc__ and inspect.cleandoc(cls.__doc__)
    if not doc:
        return ["no class docstring"]
    if "Example::" not in doc:
        errors.append("no Example:: section")
    params = _ctor_params(cls)
    args = _section(doc, "Args:")
    if params and not args:
        errors.append("no Args: section")
    for p in params:
        if not re.search(rf"^\s*{re.escape(p.name)} \([^)]+\): \S", args, re.MULTILINE):
            errors.append(f"constructor argument {p.name!r} is not described as 'name (Type): meaning' in Args:")
    if len(params) > MAX_NUM_ARGS_IN_MODULE_CTOR and not any(_is_config(cls, p) for p in params):
        errors.append(f"{len(params)} constructor arguments (at most {MAX_NUM_ARGS_IN_MODULE_CTOR} or a config object)")
    forward = getattr(cls, "forward", None)
    if forward is None or forward is nn.Module.forward:
        return errors + ["no forward"]
    fdoc = inspect.cleandoc(forward.__doc__ or "")
    fargs = _section(fdoc, "Args:")
    for name in list(inspect.signature(forward).parameters)[1:]:
        if not re.search(rf"^\s*{re.escape(name)} \([^)]+\): \S", fargs, re.MULTILINE):
            errors.append(f"forward argument {name!r} is not described in forward's Args:")
    if not _section(fdoc, "Returns:").strip():
        errors.append("forward docstring has no Returns: section")
    return errors


def _example(doc: str) -> str:
    """The code of the ``Example::`` block of a docstring."""
    block = _section(inspect.cleandoc(doc), "Example::")
    return textwrap.dedent(block).strip("\n")


MODULE_CLASSES = _public_classes()
EXAMPLES = [(name, cls) for name, cls in _public_classes(object) if cls.__doc__ and "Example::" in cls.__doc__]


def test_every_package_module_is_found() -> None:
    names = {name.rsplit(".", 1)[1] for name, _ in MODULE_CLASSES}
    assert {"MultiEmbeddingBagCollection", "DCNv2Interaction", "MultiEmbeddingModel", "MultiEmbeddingTrain"} <= names
    files = {Path(m.__file__).name for m in _submodules()}
    assert {"interactions.py", "layers.py", "heads.py", "me_model.py"} <= files


@pytest.mark.parametrize("name, cls", MODULE_CLASSES, ids=[n for n, _ in MODULE_CLASSES])
def test_module_follows_torchrec_linter_rules(name: str, cls: type) -> None:
    assert lint_module_class(cls) == [], name


@pytest.mark.parametrize("name, cls", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docstring_example_runs(name: str, cls: type) -> None:
    """Run in the namespace of the class's own module, as a reader of that file would."""
    code = _example(cls.__doc__)
    assert code, f"{name}: empty Example:: block"
    namespace: Dict[str, Any] = dict(vars(importlib.import_module(cls.__module__)))
    exec(compile(code, f"<{name} Example>", "exec"), namespace)


def test_every_public_module_has_an_example_that_is_run() -> None:
    assert {name for name, _ in MODULE_CLASSES} <= {name for name, _ in EXAMPLES}


class _Undocumented(nn.Module):
    def __init__(self, a: int, b: int, c: int, d: int, e: int, f: int) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x


class _HalfDocumented(nn.Module):
    """Something.

    Args:
        a (int): documented.
    """

    def __init__(self, a: int, b: int) -> None:
        super().__init__()

    def forward(self, x: Any, y: Any) -> Any:
        """
        Args:
            x (Any): documented.
        """
        return x


@dataclasses.dataclass
class _Cfg:
    size: int = 1


class _WithConfig(nn.Module):
    """Six arguments, one of them a config.

    Args:
        a (int): a.
        b (int): b.
        c (int): c.
        d (int): d.
        e (int): e.
        cfg (_Cfg): the rest.

    Example::

        _WithConfig(1, 2, 3, 4, 5, _Cfg())
    """

    def __init__(self, a: int, b: int, c: int, d: int, e: int, cfg: _Cfg) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        """
        Args:
            x (Any): anything.

        Returns:
            Any: x.
        """
        return x


class _TooMany(_WithConfig):
    """Six plain arguments.

    Args:
        a (int): a.
        b (int): b.
        c (int): c.
        d (int): d.
        e (int): e.
        f (int): f.

    Example::

        _TooMany(1, 2, 3, 4, 5, 6)
    """

    def __init__(self, a: int, b: int, c: int, d: int, e: int, f: int) -> None:
        nn.Module.__init__(self)


def test_the_rules_catch_what_they_should() -> None:
    assert lint_module_class(_Undocumented) == ["no class docstring"]
    errors = lint_module_class(_HalfDocumented)
    assert "no Example:: section" in errors
    assert any("'b'" in e and "constructor" in e for e in errors)
    assert any("'y'" in e and "forward" in e for e in errors)
    assert "forward docstring has no Returns: section" in errors
    assert lint_module_class(_WithConfig) == []
    assert lint_module_class(_TooMany) == ["6 constructor arguments (at most 5 or a config object)"]
    assert _example(_WithConfig.__doc__) == "_WithConfig(1, 2, 3, 4, 5, _Cfg())"
