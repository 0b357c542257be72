"""Command-line flags generated from option declarations (:class:`n2x.api.Option`), and the CLI's wording of the
engine's hints (``{overwrite}`` -> ``pass --overwrite``)."""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Sequence

from ..api import AUTO, Option

#: Short flags kept from earlier versions for the common training options (the long name works too).
SHORT_FLAGS = {"patch_size": "--patch", "batch_size": "--batch", "learning_rate": "--lr"}
#: Engine option names that the CLI spells differently.
FLAG_NAMES = {"ngff_version": "--ngff", "format": "--format", "destination": "-o", "output": "-o"}


def option_flags(opt: Option) -> list[str]:
    """``["--patch", "--patch-size"]``: the short flag first where there is one."""
    short = SHORT_FLAGS.get(opt.name)
    return [short, opt.flag] if short else [opt.flag]


def _help(opt: Option) -> str:
    text = opt.help
    if opt.default is not None and opt.type != "bool" and "default" not in text:
        text += f" (default {_shown(opt, opt.default)})"
    elif opt.default is None and opt.auto and "default" not in text:
        text += " (default auto)"
    if opt.unit == "bytes":
        text += "; in GiB"
    return text


def _shown(opt: Option, value: Any) -> str:
    if opt.unit == "bytes":
        return f"{value / 2**30:g} GiB"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metavar(opt: Option) -> str | None:
    if opt.choices:
        values = [str(c) for c in opt.choices] + ([AUTO] if opt.auto else [])
        return "{" + ",".join(values) + "}"
    return {"image": "FILE", "shape": "N", "int": "N", "float": "X"}.get(opt.type)


def add_option(parser: Any, opt: Option, *, merged_help: str | None = None, suppress: bool = True) -> None:
    """Add ``opt`` as a flag. Values stay text (or ints for a shape) and are checked by :meth:`Option.parse`, so
    the CLI, the widgets and the api give the same message for a bad value. ``suppress``: an option not given is
    absent from the parsed namespace (the engine's default applies)."""
    # argparse expands %-formats in help texts: a literal "1%" must reach it as "1%%"
    kwargs: dict[str, Any] = {"dest": opt.name, "help": (merged_help or _help(opt)).replace("%", "%%")}
    if suppress:
        kwargs["default"] = argparse.SUPPRESS
    if opt.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif opt.type == "shape":
        kwargs.update(nargs="+", metavar="N")
    else:
        kwargs["metavar"] = _metavar(opt)
    parser.add_argument(*option_flags(opt), **kwargs)


def add_method_options(parser: argparse.ArgumentParser, methods: Iterable[Any]) -> dict[str, list[str]]:
    """One group of flags per method (its label as title); an option declared by several methods (``--loss``,
    N2V's and N2V2's ``--mask-fraction``) is added once, with each method's help where they differ. Returns option
    name -> the methods that declare it."""
    owners: dict[str, list[str]] = {}
    first: dict[str, tuple[Any, Option]] = {}
    helps: dict[str, dict[str, list[str]]] = {}  # option -> help text -> the methods it comes from
    for info in methods:
        for opt in info.options:
            owners.setdefault(opt.name, []).append(info.name)
            helps.setdefault(opt.name, {}).setdefault(_help(opt), []).append(info.name)
            first.setdefault(opt.name, (info, opt))
    groups: dict[str, Any] = {}
    for name, (info, opt) in first.items():
        group = groups.get(info.name)
        if group is None:
            group = groups[info.name] = parser.add_argument_group(f"{info.label} (--method {info.name})",
                                                                    info.description.replace("%", "%%"))
        add_option(group, opt, merged_help=_merged_help(helps[name]))
    return owners


def _merged_help(by_text: dict[str, list[str]]) -> str | None:
    """One help for an option several methods declare: the shared text once, then what differs per method
    (typically the default: ``...; n2v: default neighbour; n2v2: default median``)."""
    if len(by_text) == 1:
        return None
    heads = {text.rsplit("; ", 1)[0] for text in by_text}
    if len(heads) == 1 and all("; " in text for text in by_text):
        tails = [f"{', '.join(ms)}: {text.rsplit('; ', 1)[1]}" for text, ms in by_text.items()]
        return "; ".join([heads.pop(), *tails])
    return "; ".join(f"{', '.join(ms)}: {text}" for text, ms in by_text.items())


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The options among ``names`` that the command line set."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def cli_words(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Engine option name -> how the CLI says it in a hint: ``pass --overwrite`` for a switch, else the flag."""
    words: dict[str, str] = {}
    for action in _all_actions(parser):
        if not action.option_strings or action.dest in words:
            continue
        flag = _long(action.option_strings)
        switch = isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction))
        words[action.dest] = f"pass {flag}" if switch else flag
    for name, flag in SHORT_FLAGS.items():
        words.setdefault(name, flag)
    for name, flag in FLAG_NAMES.items():
        words.setdefault(name, flag)
    return words


def _long(strings: Sequence[str]) -> str:
    longs = [s for s in strings if s.startswith("--")]
    return longs[0] if longs else strings[0]


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        out.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(_all_actions(sub))
    return out


def gib_to_bytes(value: Any) -> float:
    """``--max-memory`` is given in GiB; the engine takes bytes."""
    try:
        return float(value) * 2**30
    except (TypeError, ValueError):
        return value  # the engine's check words the problem
