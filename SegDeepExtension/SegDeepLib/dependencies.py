"""Python packages the module needs, installed on first use with the user's consent.

Nothing is installed when the module is imported. :func:`ensure_dependencies` is called when the
user first segments, compares or exports (and by the console API):

* the engine's packages through ``slicer.packaging.pip_ensure`` (Slicer 5.12+: it asks the user
  and is skipped in testing mode), else ``slicer.util.pip_install`` after a confirmation dialog;
* PyTorch through the SlicerPyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch``),
  which picks the CUDA build matching the GPU driver. An installed torch older than
  :data:`TORCH_REQUIREMENT` is detected (from its package metadata: Slicer's process never imports
  torch) and the user is offered the update through the same extension.

Versions count: a package older than the engine's minimum is treated as missing and installed with
the engine's constraint (``scipy>=1.11``...). In Slicer's testing mode nothing is ever installed:
:class:`MissingDependencyError` says what is missing (the self-test skips on it).
:func:`slicer_version_problem` is the message shown in a Slicer older than
:data:`MINIMUM_SLICER_VERSION`.

Outside the Slicer application (tests with ``slicer-core``, scripts) nothing is installed: a
missing package raises :class:`MissingDependencyError` naming the ``pip install`` command.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Sequence

from SegDeepLogic.errors import SegDeepError

# The engine's run-time packages that Slicer does not bundle (numpy, SimpleITK and VTK come with
# Slicer), with the minimum versions of pyproject.toml.
ENGINE_REQUIREMENTS: tuple[str, ...] = (
    "scipy>=1.11",
    "scikit-image>=0.22",
    "safetensors>=0.4",
    "lib3mf>=2.3",
    "manifold3d>=2.5",
)
TORCH_REQUIREMENT = "torch>=2.2"
MINIMUM_SLICER_VERSION = (5, 8)
"""Oldest 3D Slicer SegDeep supports (Python 3.9; parameter node wrapper, ``slicer.i18n``)."""
IMPORT_NAMES = {
    "scipy": "scipy",
    "scikit-image": "skimage",
    "safetensors": "safetensors",
    "lib3mf": "lib3mf",
    "manifold3d": "manifold3d",
    "SimpleITK": "SimpleITK",
    "torch": "torch",
}


class MissingDependencyError(SegDeepError):
    """A required Python package is missing and was not (or could not be) installed."""


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement specifier.

    Examples
    --------
    >>> requirement_name("scikit-image>=0.22")
    'scikit-image'
    """
    for i, ch in enumerate(requirement):
        if ch in "<>=!~;[ ":
            return requirement[:i]
    return requirement


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string (local and pre-release parts dropped).

    Examples
    --------
    >>> version_tuple("2.1.0+cu118")
    (2, 1, 0)
    >>> version_tuple("0.22rc1") < version_tuple("0.22.0") or version_tuple("0.22rc1") == (0, 22)
    True
    """
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def minimum_version(requirement: str) -> tuple[int, ...] | None:
    """The ``>=`` bound of a requirement specifier, or None.

    Examples
    --------
    >>> minimum_version("torch>=2.2")
    (2, 2)
    >>> minimum_version("numpy") is None
    True
    """
    match = re.search(r">=\s*([0-9][0-9A-Za-z.+]*)", requirement)
    return version_tuple(match.group(1)) if match else None


def satisfies(version: str, requirement: str) -> bool:
    """Whether an installed version meets the requirement's ``>=`` bound (compared release by release).

    Examples
    --------
    >>> satisfies("2.1.2+cu121", "torch>=2.2"), satisfies("2.2.0", "torch>=2.2"), satisfies("2.13.0", "torch>=2.2")
    (False, True, True)
    """
    bound = minimum_version(requirement)
    if bound is None:
        return True
    installed = version_tuple(version)
    width = max(len(installed), len(bound))
    return installed + (0,) * (width - len(installed)) >= bound + (0,) * (width - len(bound))


def installed_version(requirement: str) -> str | None:
    """The installed version of a requirement's distribution (its metadata: nothing is imported), or None."""
    name = requirement_name(requirement)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            return None
        return ""  # importable without metadata (a development build): its version is unknown


def missing_packages(requirements: Sequence[str]) -> list[str]:
    """Requirements not met in this interpreter: not installed, or older than their ``>=`` bound."""
    missing = []
    for requirement in requirements:
        version = installed_version(requirement)
        if version is None or (version and not satisfies(version, requirement)):
            missing.append(requirement)
    return missing


def slicer_version_problem(major: int, minor: int) -> str | None:
    """The message to show in a 3D Slicer older than :data:`MINIMUM_SLICER_VERSION`, else None.

    Examples
    --------
    >>> slicer_version_problem(5, 8) is None and slicer_version_problem(5, 10) is None
    True
    >>> print(slicer_version_problem(5, 6))
    SegDeep needs 3D Slicer 5.8 or newer; this is 3D Slicer 5.6. Install a current 3D Slicer from download.slicer.org and SegDeep from its Extensions Manager.
    """
    if (int(major), int(minor)) >= MINIMUM_SLICER_VERSION:
        return None
    need = ".".join(map(str, MINIMUM_SLICER_VERSION))
    return (
        f"SegDeep needs 3D Slicer {need} or newer; this is 3D Slicer {int(major)}.{int(minor)}. "
        "Install a current 3D Slicer from download.slicer.org and SegDeep from its Extensions Manager."
    )


def _testing_mode() -> bool:
    import slicer

    try:
        return bool(slicer.app.testingEnabled())
    except AttributeError:
        return False


def _refuse_in_testing_mode(missing: Sequence[str]) -> None:
    """Never install on a build or test machine: say what is missing instead."""
    if missing and _testing_mode():
        raise MissingDependencyError(
            f"SegDeep needs {', '.join(missing)}, which are not installed; nothing is installed in Slicer's testing mode "
            "(install them with slicer.util.pip_install, or PyTorch with the PyTorch extension, and run the test again)"
        )


def _in_slicer_application() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app")


def ensure_dependencies(*, torch: bool = False, ask: bool = True) -> None:
    """Make sure the engine's packages (and PyTorch with ``torch=True``) can be imported.

    Parameters
    ----------
    torch : bool
        Also require PyTorch (segmentation runs the network; comparing and exporting do not).
    ask : bool
        Ask before installing (inside Slicer). ``slicer.packaging.pip_ensure`` asks on its own.

    Raises
    ------
    MissingDependencyError
        A package is missing and the user declined, the installation failed, or this is not the
        Slicer application (nothing is installed outside it).
    """
    requirements = list(ENGINE_REQUIREMENTS)
    if not _in_slicer_application():
        missing = missing_packages(requirements + ([TORCH_REQUIREMENT] if torch else []))
        if missing:
            raise MissingDependencyError(
                f"SegDeep needs {', '.join(missing)}; install with: python -m pip install " + " ".join(f'"{r}"' for r in missing)
            )
        return
    _ensure_in_slicer(requirements, ask=ask)
    if torch:
        _ensure_torch(ask=ask)


def _ensure_in_slicer(requirements: list[str], *, ask: bool) -> None:
    import slicer

    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    _refuse_in_testing_mode(missing_packages(requirements))
    pip_ensure = getattr(packaging, "pip_ensure", None)
    if pip_ensure is not None:
        try:
            pip_ensure(requirements, requester="SegDeep")
        except TypeError:  # an older signature without ``requester``
            pip_ensure(requirements)
    else:
        missing = missing_packages(requirements)
        if not missing:
            return
        if ask and not slicer.util.confirmOkCancelDisplay(
            "SegDeep needs these Python packages, which are not installed yet:\n\n"
            + "\n".join(missing)
            + "\n\nInstall them now? This takes a minute and needs an internet connection.",
            windowTitle="SegDeep: install Python packages",
        ):
            raise MissingDependencyError(f"SegDeep cannot run without {', '.join(missing)} (installation declined)")
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    missing = missing_packages(requirements)
    if missing:
        raise MissingDependencyError(f"SegDeep cannot run without {', '.join(missing)} (not installed)")


def torch_problem() -> str | None:
    """What is wrong with this interpreter's PyTorch for SegDeep: None (fine), ``"missing"`` or ``"old:<version>"``.

    Read from the package metadata, so PyTorch is never imported in Slicer's own process.
    """
    version = installed_version(TORCH_REQUIREMENT)
    if version is None:
        return "missing"
    if version and not satisfies(version, TORCH_REQUIREMENT):
        return f"old:{version}"
    return None


def _ensure_torch(*, ask: bool) -> None:
    import slicer

    problem = torch_problem()
    if problem is None:
        return
    _refuse_in_testing_mode([TORCH_REQUIREMENT])
    old = problem[len("old:") :] if problem.startswith("old:") else None
    try:
        import PyTorchUtils
    except ImportError:
        if old:
            raise MissingDependencyError(
                f"SegDeep needs {TORCH_REQUIREMENT}, but this Slicer has PyTorch {old}: install the 'PyTorch' extension "
                f"from the Extensions Manager, restart Slicer, and update PyTorch in its 'PyTorch Utils' module (version "
                f"requirement '{TORCH_REQUIREMENT[len('torch') :]}')"
            ) from None
        raise MissingDependencyError(
            "SegDeep needs PyTorch, which the PyTorch extension installs: open the Extensions Manager, install "
            "'PyTorch', restart Slicer and try again"
        ) from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if old is None and torch_logic.torchInstalled():  # installed where the metadata did not show it
        return
    if old:
        question = (
            f"SegDeep needs PyTorch {TORCH_REQUIREMENT[len('torch') :]}; this Slicer has PyTorch {old}.\n\n"
            "Update PyTorch now? The PyTorch extension picks the build that matches your GPU driver (or the CPU build). "
            "The download is large (up to a few GB). Restart Slicer afterwards if another module already uses PyTorch."
        )
        title = "SegDeep: update PyTorch"
    else:
        question = (
            "SegDeep runs its network with PyTorch, which is not installed yet. Install it now?\n\n"
            "The PyTorch extension picks the build that matches your GPU driver (or the CPU build). "
            "The download is large (up to a few GB) and may take several minutes."
        )
        title = "SegDeep: install PyTorch"
    if ask and not slicer.util.confirmOkCancelDisplay(question, windowTitle=title):
        raise MissingDependencyError(
            f"SegDeep cannot segment without {TORCH_REQUIREMENT} (" + ("update" if old else "installation") + " declined)"
        )
    try:
        torch_module = torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch") :])
    except TypeError:  # older PyTorchUtils without the version argument
        torch_module = torch_logic.installTorch(askConfirmation=False)
    if torch_module is None:
        raise MissingDependencyError("PyTorch could not be installed; see the Python console for the reason")
    importlib.invalidate_caches()
    problem = torch_problem()
    if problem is not None:
        raise MissingDependencyError(
            f"SegDeep needs {TORCH_REQUIREMENT}; after the installation PyTorch is still {problem.replace('old:', 'version ')}. "
            "Restart Slicer and update PyTorch in the 'PyTorch Utils' module"
        )
