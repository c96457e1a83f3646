"""Third-party private API is used only in the compat modules, each for its own package (an AST scan of the package).

A module of ``src/pixelflowsom`` may not import a private module or name of another package (``import x._y``,
``from x._y import z``, ``from x import _y``), nor one of the internal modules listed in ``INTERNAL_MODULES`` (not
underscored, but not public API either), nor read or write a private attribute (``obj._name``,
``getattr(obj, "_name")``; not dunders) of anything but ``self``, ``cls``, ``super()``, the package's own modules,
classes, functions and module-level names, and private attributes of those (``self._line._stream``,
``_log._listeners``: the package's private attributes hold the package's objects). No further allowlist of the
package's own attribute names is needed. The compat modules in ``COMPAT_MODULES`` are the exceptions: each may import
the private API of its own package only, and access private attributes (the objects they are given are that
package's).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "pixelflowsom"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: The compat modules (paths relative to the package) and the one package whose private API each may use.
COMPAT_MODULES = {
    "_compat.py": "sklearn",
    "_numba_compat.py": "numba",
    "_spatialdata_compat.py": "spatialdata",
    "_distributed_compat.py": "distributed",
    "harpy/_flowsom_compat.py": "flowsom",
}

#: Modules without a leading underscore that are internals of their package, not its public API.
INTERNAL_MODULES = ("numba.core", "distributed.comm", "distributed.protocol")

#: Names that look private but are not: dunders, and the throwaway ``_``.
_NOT_PRIVATE = {"_"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in _NOT_PRIVATE


def _package_of(module: str) -> str:
    return module.split(".")[0]


def _internal(module: str) -> bool:
    return any(part for part in module.split(".") if _private(part)) or any(
        module == m or module.startswith(m + ".") for m in INTERNAL_MODULES
    )


def scan(source: str, allowed_package: str | None = None) -> list[str]:
    """Return the violations in the module ``source``: one ``"line: what"`` each.

    ``allowed_package``: the package whose private API the module may use (a compat module's); it may then also access
    private attributes.
    """
    tree = ast.parse(source)
    own = set()  # names bound to the package's own modules and objects
    found = []

    def check_module(module, lineno, what) -> bool:
        """Record importing ``module`` if it is a private or internal module of another package; return whether."""
        package = _package_of(module)
        if package in (PACKAGE, "__future__") or package == allowed_package or not _internal(module):
            return False
        found.append((lineno, what))
        return True

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _package_of(alias.name) == PACKAGE:
                    own.add(alias.asname or alias.name.split(".")[0])
                check_module(alias.name, node.lineno, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [alias.asname or alias.name for alias in node.names]
            if node.level or _package_of(module) == PACKAGE:
                own.update(names)
                continue
            if not check_module(module, node.lineno, f"from {module} import ..."):
                for alias in node.names:
                    check_module(f"{module}.{alias.name}", node.lineno, f"from {module} import {alias.name}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node in tree.body:
            own.add(node.name)
    if allowed_package is not None:
        return [f"{lineno}: {what}" for lineno, what in sorted(found)]
    own.update(t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name))

    def ours(base) -> bool:
        if isinstance(base, ast.Name):
            return base.id in ("self", "cls") or base.id in own
        if isinstance(base, ast.Call):
            return isinstance(base.func, ast.Name) and base.func.id == "super"
        if isinstance(base, ast.Attribute):  # a private attribute of our own module's object, e.g. _log._listeners
            return ours(base.value) and _private(base.attr)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name, base = node.attr, node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name, base = node.args[1].value, node.args[0]
        else:
            continue
        if _private(name) and not ours(base):
            found.append((node.lineno, f"{ast.unparse(base)}.{name}"))
    return [f"{lineno}: {what}" for lineno, what in sorted(found)]


def _modules():
    return sorted(path.relative_to(SOURCE).as_posix() for path in SOURCE.rglob("*.py"))


def test_the_compat_modules_exist():
    missing = [name for name in COMPAT_MODULES if not (SOURCE / name).is_file()]
    assert not missing, f"compat modules missing: {missing}"


@pytest.mark.parametrize("module", _modules())
def test_no_third_party_private_api_outside_its_compat_module(module):
    found = scan((SOURCE / module).read_text(encoding="utf-8"), COMPAT_MODULES.get(module))
    assert not found, (
        f"{module} uses third-party private API; move it into the package's compat module "
        f"({', '.join(f'{m}: {p}' for m, p in COMPAT_MODULES.items())}):\n" + "\n".join(found)
    )


_VIOLATIONS = """
import numba.core.event
import sklearn.utils._param_validation as pv
from spatialdata._io import write_labels
from spatialdata import _core
from distributed.comm import connect
from numba import core

def f(sdata, model):
    sdata._gen_elements(include_tables=True)
    model._y_codes = None
    getattr(model, "_is_fitted")
    x = sdata.images._store
"""

_CLEAN = """
from __future__ import annotations
import numba
from numba.extending import intrinsic
from sklearn.utils.validation import check_is_fitted
from . import _log
from ._images import _helper
from pixelflowsom._store import _stage
import pixelflowsom._nearest as nearest

_CACHE = {}

class Thing(Base):
    def __init__(self):
        super().__init__()
        self._x = 1
        super()._end_line(True)

    @classmethod
    def make(cls):
        return cls._default

def _private_helper(thing):
    _log._listeners.clear()
    _CACHE._size
    Thing._registry
    nearest._kernel
    _helper(thing).__class__
    _private_helper._cache = None
    for _ in range(3):
        pass
    return thing.__dict__, thing.__sklearn_is_fitted__()
"""


def test_scan_flags_private_imports_and_attributes():
    found = scan(_VIOLATIONS)
    assert [line.split(": ", 1)[1] for line in found] == [
        "import numba.core.event",
        "import sklearn.utils._param_validation",
        "from spatialdata._io import ...",
        "from spatialdata import _core",
        "from distributed.comm import ...",
        "from numba import core",
        "sdata._gen_elements",
        "model._y_codes",
        "model._is_fitted",
        "sdata.images._store",
    ]


def test_scan_lets_compat_modules_use_their_own_package_only():
    assert scan("from spatialdata._io import write_labels\nx._y", "spatialdata") == []
    assert scan("from numba.core import event", "spatialdata") == ["1: from numba.core import ..."]


def test_scan_passes_public_api_and_the_packages_own_private_names():
    assert scan(_CLEAN) == []
