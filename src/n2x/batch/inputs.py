"""The inputs of a batch: files, glob patterns and folders turned into a list of images, each with the folder its
output path is made relative to. Used by batch denoising, by ``n2x train`` and by the napari Denoise widget."""
from __future__ import annotations

import glob as _glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError
from ..io.paths import image_stem, is_tiff_name, is_zarr_name, is_zarr_path


@dataclass(frozen=True)
class BatchInput:
    """One input image: ``path`` (a TIFF file or a zarr folder) and ``base``, the folder its output path is made
    relative to (the folder it was found in, the fixed part of a glob, or the file's own folder)."""

    path: Path
    base: Path
    from_folder: bool = False

    @property
    def relative(self) -> Path:
        """``path`` relative to ``base``: the sub-path its output keeps under the output folder."""
        try:
            return self.path.relative_to(self.base)
        except ValueError:
            return Path(self.path.name)


def _is_zarr_folder(p: Path) -> bool:
    """A folder that is one zarr image (by its name or its metadata): an input, never descended into."""
    return p.is_dir() and is_zarr_path(p)


def _is_image_file(p: Path) -> bool:
    return p.is_file() and is_tiff_name(p)


def _walk_folder(folder: Path, recursive: bool) -> list[Path]:
    """Images in ``folder``: TIFF files and zarr folders (a zarr is one image, never descended into).

    Hidden entries (``.name``) are skipped: they are tools' private files (e.g. ``.DS_Store``, ``.ipynb_checkpoints``).
    """
    found: list[Path] = []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"the folder {folder} cannot be listed ({exc.strerror or exc})",
                         hint="check its permissions") from None
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if _is_zarr_folder(p):
                found.append(p)
            elif recursive:
                found.extend(_walk_folder(p, recursive))
        elif _is_image_file(p):
            found.append(p)
    return found


def glob_base(pattern: str) -> Path:
    """The fixed (non-wildcard) leading folder of a glob pattern: outputs keep the paths relative to it."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if _glob.has_magic(part):
            break
        fixed.append(part)
    else:
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def expand_inputs(items: Iterable[str | os.PathLike], recursive: bool = False) -> list[BatchInput]:
    """Turn files, glob patterns and folders into the list of input images, in a stable order, without duplicates.

    A folder contributes its TIFF files and zarr folders (sub-folders too with ``recursive``); a glob pattern (``*``,
    ``?``, ``[...]``, ``**`` for any depth) contributes its matches, folders among them expanded like folders; a
    file is taken as it is (a file that is not an image fails later, with its reason). A path that does not exist
    and matches nothing as a pattern raises :class:`InputError`.
    """
    out: list[BatchInput] = []
    seen: set[Path] = set()

    def add(p: Path, base: Path, from_folder: bool) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(BatchInput(p, base, from_folder))

    for item in items:
        text = os.fspath(item)
        p = Path(text)
        if p.exists():
            if p.is_dir() and not _is_zarr_folder(p):
                for f in _walk_folder(p, recursive):
                    add(f, p, True)
            else:
                add(p, p.parent, False)
            continue
        if not _glob.has_magic(text):
            raise InputError(f"{text} does not exist", hint="check the path")
        matches = sorted(_glob.glob(text, recursive=True))
        if not matches:
            raise InputError(f"no file matches the pattern {text!r}", hint="check the pattern and the folder")
        base = glob_base(text)
        for m in map(Path, matches):
            if m.is_dir() and not _is_zarr_folder(m):
                for f in _walk_folder(m, recursive):
                    add(f, base, True)
            elif m.is_dir() or _is_image_file(m):
                add(m, base, True)
    return out


def no_images_error(recursive: bool) -> InputError:
    """The error for inputs that hold no image."""
    return InputError("no TIFF or zarr images were found in the given inputs",
                      hint=None if recursive else "{recursive} to look into sub-folders too")


def input_paths(items: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Paths of the images that ``items`` (files, globs, folders) name; :class:`InputError` when there are none."""
    found = [i.path for i in expand_inputs(items, recursive)]
    if not found:
        raise no_images_error(recursive)
    return found


def output_stem(path: Path) -> str:
    """``path``'s name without its image suffix (``.ome.tif``, ``.tif``, ``.ome.zarr``, ``.zarr``...)."""
    return image_stem(path)


def is_batch_job(inputs: Sequence[str], output: str) -> bool:
    """Whether denoising ``inputs`` into ``output`` is a batch (outputs in a folder) rather than one image.

    One image is one existing input image (a file or a zarr folder) with ``output`` naming a file (``.tif``,
    ``.tiff``, ``.zarr``); several inputs, a folder, a glob, or ``output`` a folder mean a batch.
    """
    if len(inputs) != 1:
        return True
    src = Path(inputs[0])
    if not src.exists():
        # A pattern is a batch; a missing plain path goes to single-file mode, which reports it.
        return _glob.has_magic(inputs[0])
    if src.is_dir() and not _is_zarr_folder(src):
        return True
    out = Path(output)
    if not (is_tiff_name(out) or is_zarr_name(out)):
        return True
    return out.is_dir() and not _is_zarr_folder(out) and any(out.iterdir())


__all__ = ["BatchInput", "expand_inputs", "input_paths", "glob_base", "output_stem", "is_batch_job",
           "no_images_error"]
