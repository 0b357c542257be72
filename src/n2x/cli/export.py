"""``n2x export``: a trained model as a BioImage Model Zoo package (``.zip``) for Fiji/deepImageJ, ilastik, QuPath,
BiaPy and bioimageio.core."""
from __future__ import annotations

import argparse
from typing import Any

def add_export_parser(sub: Any) -> None:
    sub.add_parser("export", help="export a model as a BioImage Model Zoo package (.zip)", fill=_fill_export)


def _fill_export(p: argparse.ArgumentParser) -> None:
    """``n2x export``'s arguments (added when the command is used or its help shown)."""
    from .. import api

    licence = api.export_bioimageio.__kwdefaults__["license"]  # the api's default, stated once there
    p.add_argument("model", help="model file (.n2x)")
    p.add_argument("-o", "--output", required=True, help="the package to write (.zip; added when missing)")
    p.add_argument("--name", help="the model's display name (default: n2x <method> denoiser)")
    p.add_argument("--authors", help="comma-separated author names (default: a placeholder asking to name them)")
    p.add_argument("--license", default=licence, help=f"SPDX licence identifier (default {licence})")
    p.add_argument("--test-image", metavar="FILE", help="image whose crop becomes the package's test input "
                   "(default: a deterministic synthetic image of the model's axes)")
    p.add_argument("--axes", help="axes of --test-image (default: from the file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.add_argument("--no-onnx", action="store_true", help="write TorchScript weights only")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the package and say where, with the weight formats it holds."""
    from .. import api

    path = api.export_bioimageio(args.model, args.output, name=args.name, authors=args.authors,
                                 license=args.license, test_image=args.test_image,
                                 test_axes=args.axes.upper() if args.axes else None, onnx=not args.no_onnx,
                                 overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
