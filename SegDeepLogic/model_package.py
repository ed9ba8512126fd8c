"""Model packages: a network's weights with the card that says how to use them.

A *model package* is a folder (or a ``.zip`` archive of one) holding

* ``model.json`` -- the :class:`ModelCard`: architecture and its parameters, label names,
  values, colours and terminology, the voxel spacing, axis orientation, intensity
  normalisation and patch size the network expects, how it was trained and validated, its
  licence, and the SHA-256 of the weights file;
* the weights file -- ``weights.safetensors`` (preferred) or a PyTorch ``.pt``/``.pth``
  state dict.

Loading never executes code from the package: safetensors holds raw tensors only, and
``.pt``/``.pth`` files are read with ``torch.load(..., weights_only=True)``, which refuses
pickled objects that would need code to rebuild (:class:`ModelPackageError` says so). The
weights' SHA-256 is checked against the card, and the weights against the card's architecture
(names and shapes), before the network is returned.

Label values and output channels
--------------------------------
Output channel 0 of the network is the background and channel ``k >= 1`` the logit of
``labels[k - 1]`` (the card's list order); that label's ``value`` is what a label map stores
for it, so values need not be contiguous. A network therefore has ``1 + len(labels)`` output
channels (:attr:`ModelCard.num_classes`), and ``channel_values[argmax]`` is the label map
(:attr:`ModelCard.channel_values`).

Examples
--------
>>> import tempfile
>>> from SegDeepLogic.networks import UNet3D
>>> card = ModelCard(
...     name="demo", version="1", architecture="unet3d",
...     architecture_params={"in_channels": 1, "out_channels": 2, "channels": [4, 8]},
...     labels=[{"name": "bone", "value": 1, "color": [0.9, 0.85, 0.6]}],
...     spacing_ijk_mm=[2, 2, 2], orientation="LPS",
...     intensity={"clip_hu": [-1024, 2000], "subtract": 0, "divide": 1000},
...     patch_size_kji=[16, 16, 16], license="CC0-1.0")
>>> folder = save_model_package(UNet3D(1, 2, channels=(4, 8)), card, tempfile.mkdtemp() + "/demo")
>>> package = load_model_package(folder)
>>> package.label_names, package.card.num_classes, package.network.training
(['bone'], 2, False)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path, make_temp_dir, write_all
from .errors import ModelPackageError, WriteError
from .model_card import (
    CARD_FILE,
    ModelCard,
    _opened_package,
    file_sha256,
)

if TYPE_CHECKING:  # torch is imported where it is needed: listing the bundled packages never imports it
    import torch
    from torch import nn

__all__ = ["ModelPackage", "load_model_package", "save_model_package"]


# --- the loaded package -----------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class ModelPackage:
    """A loaded model: its card and its network (eval mode, float32, on the CPU).

    Attributes
    ----------
    card : ModelCard
    network : torch.nn.Module
        Ready for inference; move it with ``package.network.to(device)``.
    path : Path
        The package folder or ``.zip`` archive it was loaded from.
    weights_sha256 : str
        SHA-256 of the weights file as read (equal to the card's when verified).
    """

    card: ModelCard
    network: nn.Module
    path: Path
    weights_sha256: str

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def labels(self) -> list[dict[str, Any]]:
        return self.card.labels

    @property
    def label_names(self) -> list[str]:
        return self.card.label_names

    @property
    def label_values(self) -> list[int]:
        return self.card.label_values

    @property
    def label_colors(self) -> list[tuple[float, float, float]]:
        return self.card.label_colors

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def channel_values(self) -> list[int]:
        return self.card.channel_values

    @property
    def spacing_ijk_mm(self) -> tuple[float, float, float]:
        return self.card.spacing_ijk_mm

    @property
    def patch_size_kji(self) -> tuple[int, int, int]:
        return self.card.patch_size_kji

    @property
    def orientation(self) -> str:
        return self.card.orientation

    def normalize_intensity(self, hu: Any) -> Any:
        """See :meth:`ModelCard.normalize_intensity`."""
        return self.card.normalize_intensity(hu)

    def __repr__(self) -> str:
        return (
            f"ModelPackage(name={self.card.name!r}, version={self.card.version!r}, architecture={self.card.architecture!r}, "
            f"labels={self.label_names}, spacing_ijk_mm={self.spacing_ijk_mm}, path='{self.path}')"
        )


# --- weights ----------------------------------------------------------------------------------
def _read_state_dict(weights: Path, source: str) -> dict[str, torch.Tensor]:
    import torch

    if weights.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelPackageError(f"cannot read the weights {source} as safetensors: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; our error says what matters
            data = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        raise ModelPackageError(
            f"refused to load the weights {source}: the file holds pickled Python objects that would have to run code to "
            f"be rebuilt{f' ({detail})' if detail else ''}. SegDeep loads only plain tensors; convert trusted weights to "
            "safetensors (save_model_package does)."
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelPackageError(f"cannot read the weights {source} as a PyTorch state dict: {exc}") from exc
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]  # a checkpoint dict {"state_dict": ..., "epoch": ...}
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ModelPackageError(f"the weights {source} are not a state dict (a mapping of parameter names to tensors)")
    return dict(data)


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check_weights(network: nn.Module, state: Mapping[str, torch.Tensor], card: ModelCard, source: str) -> None:
    """Raise a ModelPackageError naming the mismatches between ``state`` and ``network``."""
    import torch

    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} with another shape (file vs card): {_few(shapes)}")
        raise ModelPackageError(
            f"the weights {source} do not match architecture {card.architecture!r} with the card's architecture_params: "
            + "; ".join(problems)
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelPackageError(f"the weights {source} contain NaN or infinite values in {_few(bad)}")


def load_model_package(path: str | os.PathLike, *, verify_hash: bool = True) -> ModelPackage:
    """Load a model package: validated card, verified weights, network ready for inference.

    Parameters
    ----------
    path : str or Path
        A package folder (holding ``model.json`` and the weights file), its ``model.json``, or
        a ``.zip`` archive of such a folder. Archives are read in place (the weights go through
        a private temporary folder); entries with absolute paths, ``..`` or links are refused.
    verify_hash : bool
        Check the weights file's SHA-256 against the card (default). Turn it off only for
        packages you are developing.

    Returns
    -------
    ModelPackage
        With the network in eval mode, float32, on the CPU.

    Raises
    ------
    ModelPackageError
        Missing package, card or weights file; invalid JSON or card; SHA-256 mismatch;
        unknown architecture; weights that do not fit the architecture; pickled code.

    Examples
    --------
    >>> package = load_model_package(Path(__import__("SegDeepLogic").__file__).parents[1] / "Testing" / "Data" / "test_model")
    >>> package.label_names, package.patch_size_kji
    (['bone', 'soft_tissue'], (32, 32, 32))
    """
    import torch

    from .networks import build_network

    with _opened_package(path, with_weights=True) as (card, weights, package):
        assert weights is not None
        source = f"{package}: {card.weights_file}"
        actual = file_sha256(weights)
        if verify_hash:
            if not card.weights_sha256:
                raise ModelPackageError(
                    f"{package}: the card has no weights_sha256, so the weights cannot be verified; save the package with "
                    "save_model_package, or load it with verify_hash=False"
                )
            if actual != card.weights_sha256:
                raise ModelPackageError(
                    f"SHA-256 mismatch for {source}: the card expects {card.weights_sha256}, the file has {actual}. The file is "
                    "corrupt or was replaced; download the package again (or re-save it if you changed the weights)"
                )
        state = _read_state_dict(weights, source)
    network = build_network(card.architecture, card.architecture_params)
    _check_weights(network, state, card, source)
    network.load_state_dict(state, strict=True)
    network = network.to(device="cpu", dtype=torch.float32).eval()
    return ModelPackage(card=card, network=network, path=package, weights_sha256=actual)


# --- saving -----------------------------------------------------------------------------------
def _cpu_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    import torch

    # Own contiguous CPU copies: safetensors refuses tensors that share memory; floats are
    # stored as float32 so that every device can read them.
    state = {}
    for key, value in network.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        state[key] = value.contiguous().clone()
    return state


def save_model_package(
    network: nn.Module,
    card: ModelCard,
    folder: str | os.PathLike,
    *,
    overwrite: bool = False,
    archive: bool = False,
) -> Path:
    """Write ``network``'s weights (safetensors) and ``card`` as a model package, atomically.

    The package is assembled in a temporary folder next to the destination and renamed into
    place, so a reader never sees a half-written package under the final name, and a failure
    leaves nothing behind. The card is written with the computed ``weights_sha256`` (and
    ``weights_file`` set to a ``.safetensors`` name).

    Parameters
    ----------
    network : torch.nn.Module
        The trained network; its state dict must fit ``card``'s architecture.
    card : ModelCard
    folder : str or Path
        Destination folder; with ``archive=True`` the ``.zip`` file (``.zip`` is appended if
        missing).
    overwrite : bool
        Replace an existing package (only a folder holding ``model.json``, an empty folder or
        a ``.zip`` file is ever replaced).
    archive : bool
        Write a single ``.zip`` file instead of a folder.

    Returns
    -------
    Path
        The package folder or archive.

    Raises
    ------
    FileExistsError
        The destination exists and ``overwrite`` is False.
    ModelPackageError
        The weights do not match the card's architecture, or the destination is not a
        package that may be replaced.
    """
    from torch import nn

    from .networks import build_network

    if not isinstance(card, ModelCard):
        raise TypeError(f"card must be a ModelCard, got {type(card).__name__}")
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
    final = Path(folder)
    if archive and final.suffix.lower() != ".zip":
        final = final.with_name(final.name + ".zip")
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise FileExistsError(f"refusing to overwrite existing model package: {final}")
        _check_replaceable(final, archive)

    state = _cpu_state_dict(network)
    _check_weights(build_network(card.architecture, card.architecture_params), state, card, "to save")
    weights_file = card.weights_file if card.weights_file.lower().endswith(".safetensors") else "weights.safetensors"

    from safetensors.torch import save_file

    staging = make_temp_dir(final, "partial")  # hidden; a later run removes it if this one is killed
    try:
        save_file(state, str(staging / weights_file), metadata={"format": "pt"})
        _verify_safetensors(staging / weights_file, state)
        saved = dataclasses.replace(card, weights_file=weights_file, weights_sha256=file_sha256(staging / weights_file))
        write_all(staging / CARD_FILE, (json.dumps(saved.to_dict(), indent=2) + "\n").encode("utf-8"))
        _apply_default_permissions(staging)
        if archive:
            with atomic_path(final, overwrite=True, verify=_verify_zip) as zipped:
                with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    zf.write(staging / CARD_FILE, CARD_FILE)
                    zf.write(staging / weights_file, weights_file)
        else:
            _move_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _verify_safetensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Check a just-written safetensors file holds every tensor (a short write fails here)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for key in keys:
                f.get_slice(key)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except Exception as exc:  # safetensors raises its own error types
        raise WriteError(f"writing the weights {path.name} failed: {exc}") from exc
    if keys != set(state):
        raise WriteError(f"writing the weights {path.name} failed: {len(keys)} of {len(state)} tensors are in the file")


def _verify_zip(path: Path) -> None:
    """Check every member of a just-written archive against its CRC."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WriteError(f"the model archive just written is corrupt: {exc}") from exc
    if bad is not None:
        raise WriteError(f"the model archive just written is corrupt: {bad} fails its CRC")


def _apply_default_permissions(folder: Path) -> None:
    # mkdtemp (and safetensors) create owner-only entries; a package should get the usual
    # permissions of new files. A freshly created probe file reveals them without touching
    # the process-wide umask.
    probe = folder / ".probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    probe.unlink()
    folder.chmod(file_mode | (file_mode & 0o444) >> 2)  # directories: x wherever r
    for path in folder.iterdir():
        path.chmod(file_mode)


def _check_replaceable(final: Path, archive: bool) -> None:
    # Guard against overwrite=True pointed at the wrong place (say, a home folder).
    if final.is_symlink():
        raise ModelPackageError(f"refusing to replace {final}: it is a symbolic link")
    if archive:
        if not final.is_file():
            raise ModelPackageError(f"refusing to replace {final} with a model archive: it is not a file")
    elif not final.is_dir() or not ((final / CARD_FILE).is_file() or not any(final.iterdir())):
        raise ModelPackageError(f"refusing to replace {final}: it is not a model package folder (no {CARD_FILE})")


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename the finished folder to ``final``, moving an old package aside first."""
    if not final.exists():
        os.rename(staging, final)
        return
    # A folder cannot be swapped in one atomic step: move the old one aside, rename the new
    # one in, then delete the old one (restored if the rename fails).
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    old.rmdir()
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
