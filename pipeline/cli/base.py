"""What every ``hired`` command shares: the help layout, flags made from the settings' knobs, and
one way to refuse wrong settings (exit 2, one line, before anything heavy starts)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import MISSING, fields
from typing import Any

from ..errors import EXIT_BAD_INPUT, InputError
from ..settings import ColumnMap, JobSettings, environment_settings, knobs

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout (the exit statuses); descriptions are wrapped by :func:`describe`."""


def describe(parser: argparse.ArgumentParser, text: str, epilog: str | None = None) -> None:
    parser.description = textwrap.fill(text, 100)
    parser.epilog = epilog


def environment_help(task: str) -> str:
    """The environment variables a job reads, for its --help."""
    lines = ["environment (read once, at the start):"]
    defaults = _defaults()
    for name, meaning in knobs():
        if meaning.env and task in meaning.tasks:
            default = defaults.get(name)
            text = meaning.help + ("" if "default" in meaning.help or default is None else f" (default: {default})")
            lines.append(textwrap.fill(f"{meaning.env}: {text}", 98, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def new_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def argument_type(parse):
    """A knob's parser as argparse wants it: ValueError becomes argparse's one-line refusal (exit 2)."""

    def read(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return read


def _defaults() -> dict[str, Any]:
    out = {}
    for cls, prefix in ((JobSettings, ""), (ColumnMap, "columns.")):
        for f in fields(cls):
            if f.default is not MISSING:
                out[prefix + f.name] = f.default
    return out


def add_knob_flags(parser: argparse.ArgumentParser, task: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per knob of ``task`` that has one, in its --help group, its help from the knob."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = _defaults()
    for name, meaning in knobs():
        if meaning.flag is None or task not in meaning.tasks or name in skip:
            continue
        group = groups.get(meaning.group) or groups.setdefault(meaning.group, parser.add_argument_group(meaning.group))
        helptext = meaning.help
        default = defaults.get(name)
        if "default" not in helptext and default not in (None, False, "", ()):
            helptext += f" (default: {default})"
        options: dict[str, Any] = dict(dest=name.replace(".", "__"), default=None, help=helptext.replace("%", "%%"))
        if isinstance(default, bool):
            options["action"] = "store_true"
        else:
            options.update(metavar=meaning.metavar, choices=meaning.choices,
                           type=argument_type(meaning.parse) if meaning.parse else None)
            if meaning.repeatable:
                options["action"] = "append"
        group.add_argument(meaning.flag, **options)


def settings_from_args(args: argparse.Namespace, task: str, environ, **given) -> JobSettings:
    """The settings, once: flags given, else the environment's knobs, else the defaults; ``given``
    (what the command computed itself, such as HiRED's config) on top."""
    values = environment_settings(environ)
    for name, meaning in knobs():
        value = getattr(args, name.replace(".", "__"), None)
        if value is not None and value is not False:
            values[name] = value
    columns = ColumnMap(**{name.removeprefix("columns."): v for name, v in values.items() if name.startswith("columns.")})
    plain = {name: v for name, v in values.items() if not name.startswith("columns.")}
    return JobSettings(task=task, columns=columns, **{**plain, **given})


def refuse(error: InputError | str) -> int:
    """A wrong setting: one line on standard error, exit 2."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
