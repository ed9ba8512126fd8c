"""Python packages the module needs, installed on first use with the user's consent.

Nothing is installed when the module is imported. :func:`ensure_dependencies` is called when the
user first segments, compares or exports (and by the console API):

* the engine's packages through ``slicer.packaging.pip_ensure`` (Slicer 5.12+: it asks the user
  and is skipped in testing mode), else ``slicer.util.pip_install`` after a confirmation dialog;
* PyTorch through the SlicerPyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch``),
  which picks the CUDA build matching the GPU driver.

Outside the Slicer application (tests with ``slicer-core``, scripts) nothing is installed: a
missing package raises :class:`MissingDependencyError` naming the ``pip install`` command.
"""

from __future__ import annotations

import importlib
import importlib.util
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


def missing_packages(requirements: Sequence[str]) -> list[str]:
    """Requirements whose module cannot be found in this interpreter (versions are not checked)."""
    missing = []
    for requirement in requirements:
        name = requirement_name(requirement)
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            missing.append(requirement)
    return missing


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


def _ensure_torch(*, ask: bool) -> None:
    import slicer

    if importlib.util.find_spec("torch") is not None:
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise MissingDependencyError(
            "SegDeep needs PyTorch, which the PyTorch extension installs: open the Extensions Manager, install "
            "'PyTorch', restart Slicer and try again"
        ) from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return
    if ask and not slicer.util.confirmOkCancelDisplay(
        "SegDeep runs its network with PyTorch, which is not installed yet. Install it now?\n\n"
        "The PyTorch extension picks the build that matches your GPU driver (or the CPU build). "
        "The download is large (up to a few GB) and may take several minutes.",
        windowTitle="SegDeep: install PyTorch",
    ):
        raise MissingDependencyError("SegDeep cannot segment without PyTorch (installation declined)")
    try:
        torch_module = torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch") :])
    except TypeError:  # older PyTorchUtils without the version argument
        torch_module = torch_logic.installTorch(askConfirmation=False)
    if torch_module is None:
        raise MissingDependencyError("PyTorch could not be installed; see the Python console for the reason")
