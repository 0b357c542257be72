"""``n2x train``: flags generated from :data:`n2x.api.TRAIN_OPTIONS` and each method's declared options."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import api
from ..errors import N2xError, OptionError
from .flags import add_method_options, add_option, given, gib_to_bytes
from .progress import EXIT_INTERRUPTED, progress_bar

LENGTH = ("time", "steps", "epochs")


def add_train_parser(sub: Any) -> None:
    sub.add_parser("train", help="train a denoiser on noisy images", fill=_fill_train,
                   description="Train a self-supervised denoiser on noisy images and save it as a .n2x file.")


def _fill_train(p: argparse.ArgumentParser) -> None:
    """``n2x train``'s arguments; the method flags come from the methods' declarations (which load torch)."""
    p.add_argument("images", nargs="+", help="noisy image file(s), glob patterns or folders: TIFF, OME-TIFF, "
                   "zarr, OME-Zarr (one model is trained on patches drawn from all of them)")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders of folder inputs too")
    p.add_argument("-o", "--output", required=True, help="model file to write (.n2x)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--method", default=api.AUTO_METHOD,
                   help=f"auto (the noise probe chooses, and says why) or one of {', '.join(api.method_names())} "
                        "(default auto)")
    p.add_argument("--axes", help="axes of the image, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    length = p.add_mutually_exclusive_group()
    common = p.add_argument_group("training")
    for opt in api.TRAIN_OPTIONS:
        add_option(length if opt.name in LENGTH else common, opt)
    p.set_defaults(func=cmd_train,
                   method_owners=add_method_options(p, [api.method_info(n) for n in api.method_names()]))


def _method_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The method flags given on the command line, for ``method`` (what ``--method`` resolved to); a flag of another
    method is an error, not silently dropped."""
    owners: dict[str, list[str]] = args.method_owners
    options = given(args, list(owners))
    info = api.method_info(method)  # an unknown method is reported here
    auto = args.method.lower() == api.AUTO_METHOD
    chosen = f"--method auto (which chose {info.name})" if auto else f"--method {info.name}"
    for name in options:
        if info.name not in owners[name]:
            flag = "--" + name.replace("_", "-")
            raise OptionError(f"{flag} does not apply to {chosen}; it belongs to {', '.join(owners[name])}")
    target = options.get("target")
    if isinstance(target, str):
        options["target"] = _open(target, args.axes).data
    return options


def _choose(args: argparse.Namespace, infos: list, axes: str) -> Any:
    """``--method`` resolved (``auto``: by the noise probe, or N2N when a partner flag is given); the one-line
    reason is printed for ``auto``."""
    if args.method.lower() != api.AUTO_METHOD:
        return api.choose_method([i.data for i in infos], axes, args.method)
    partner = given(args, [n for n in ("target", "pairs") if n in args.method_owners])
    choice = api.choose_method([i.data for i in infos], axes, api.AUTO_METHOD, target=partner.get("target"),
                               pairs=partner.get("pairs"), vst=getattr(args, "vst", None) or "auto",
                               dims=getattr(args, "dims", None))
    if not args.quiet:
        print(choice.reason)
    return choice


def _open(path: str, axes: str | None) -> Any:
    info = api.open_image(path)
    if axes:
        info.axes = axes.upper()
    return info


def cmd_train(args: argparse.Namespace) -> int:
    infos = [_open(str(p), args.axes) for p in api.input_paths(args.images, recursive=args.recursive)]
    axes = infos[0].axes
    if any(i.axes != axes for i in infos):
        raise N2xError("the training images have different axes", hint="give {axes}, or train on matching files")
    out = api.model_file_path(args.output)
    if out.exists() and not args.overwrite:
        raise N2xError(f"{out} exists", hint="choose another name, or {overwrite} to replace it")
    common = given(args, [o.name for o in api.TRAIN_OPTIONS])
    if "max_memory" in common:
        common["max_memory"] = gib_to_bytes(common["max_memory"])
    seconds = api.parse_duration(common["time"]) if "time" in common else None
    if not any(k in common for k in LENGTH):
        seconds = api.DEFAULT_SECONDS
    common["time"] = seconds if "steps" not in common and "epochs" not in common else None
    choice = _choose(args, infos, axes)
    gen = api.train_iter([i.data for i in infos], axes, choice, **common, **_method_options(args, choice.name))
    steps = int(common["steps"]) if common.get("steps") is not None else None
    if steps is not None:
        total, unit = float(steps), " steps"
    elif seconds is not None:
        total, unit = seconds, "s"
    else:
        total, unit = 100.0, "%"
    bar = progress_bar(total, f"train {choice.name}", args.quiet, unit)

    def show(pr: Any) -> None:
        bar.n = pr.step if steps is not None else min(total, pr.fraction * total)
        post = {"net": pr.network} if pr.network > 1 else {}  # a memorising run's budget trains more networks
        post.update(step=pr.step, loss=f"{pr.loss:.4f}")
        if pr.best_val_loss is not None:
            post["val"] = f"{pr.best_val_loss:.4f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        model = api.drain(gen, show)
    except KeyboardInterrupt:
        bar.close()
        print("n2x: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    saved = api.save_model(model, out, overwrite=True)
    h = model.history
    if not args.quiet:
        members = h.get("members") or [h]
        n, kept = len(members), sum(bool(m.get("kept", True)) for m in members)
        best = (f"best validation loss {h['best_val_loss']:.4g} at step {h['best_step']}" if n == 1 else
                f"{kept} of {n} networks kept, mean best validation loss {h['best_val_loss']:.4g}")
        print(f"saved {saved}: {h['steps']} steps in {h['train_seconds']:.0f} s "
              f"({h['patches_per_second']:.0f} patches/s), {best}")
        if h.get("rewound_at"):
            print(f"n2x: stopped early: the held-out loss rose after step {h['rewound_to']} (memorising the image), so "
                  f"training went back there at step {h['rewound_at']} and annealed from it"
                  + (f"; the budget left trained {n - 1} more network(s) from other seeds, and the model averages the "
                     f"{kept} that do not make its error on the held-out pixels worse (denoising runs each)"
                     if kept > 1 else
                     f"; the budget left trained {n - 1} more network(s) from other seeds, and the model keeps the one "
                     "that predicts the held-out pixels best" if n > 1 else ""))
        elif h.get("capped") and n > 1:
            print(f"n2x: one network learns what it can from these data in {members[0]['steps']} steps (then it "
                  f"memorises the noise); the budget left trained {n - 1} more from other seeds, and the model "
                  + (f"averages the {kept} that do not make its error on the held-out pixels worse (denoising runs "
                     "each)" if kept > 1 else "keeps the one that predicts the held-out pixels best"))
    return 0
