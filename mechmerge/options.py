"""One typed options object per command, shared by the CLI and the Python API.

Each command's options are a dataclass whose fields carry their CLI help in
`metadata`. `click_options(Cls)` turns the fields into click options (so `--help`
and the Python defaults can never drift apart), and `Cls.from_cli(**kwargs)` builds
the object back. The scores JSON records the options object it was made with.

Supported field types: str, int, float, bool (a flag), Optional[...] of those,
Literal[...] (a choice), tuple[str, ...] (a repeatable option) and dict[str, str]
(a repeatable NAME=VALUE option, e.g. `--expert math=./math-model`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Literal, Tuple, get_args, get_origin

import click

from .errors import UserError


def opt(help: str, *, flag: str | None = None, argument: bool = False, metavar: str | None = None,
        cli: bool = True, min: float | None = None) -> dict:
    """Field metadata: the CLI help text and, optionally, a flag name other than --field-name
    and the smallest value a number may take (checked when the options object is built, so
    the Python API refuses it as the CLI does)."""
    return {"help": help, "flag": flag, "argument": argument, "metavar": metavar, "cli": cli, "min": min}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) is typing.Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_pairs(values: Tuple[str, ...], what: str) -> Dict[str, str]:
    """Parse repeated NAME=VALUE strings, refusing duplicates and missing '='."""
    out: Dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UserError(f"{what} expects NAME=VALUE, got {item!r}")
        if name in out:
            raise UserError(f"{what} name {name!r} is given twice")
        out[name] = value
    return out


@dataclasses.dataclass
class Options:
    """Base class: CLI round trip and JSON record."""

    def __post_init__(self) -> None:
        """What click checks on the command line, checked for the Python API too: minimums and choices."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            low, v = f.metadata.get("min"), getattr(self, f.name)
            if low is not None and v is not None and not isinstance(v, bool) and v < low:
                raise UserError(f"--{_flag_name(f)} {v}: must be >= {low:g}")
            tp, _ = _unwrap_optional(hints[f.name])
            if get_origin(tp) is Literal and v is not None and v not in get_args(tp):
                raise UserError(f"--{_flag_name(f)} {v!r}: expected one of {', '.join(map(str, get_args(tp)))}")

    @classmethod
    def from_cli(cls, **kwargs: Any):
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in kwargs:
                continue
            v = kwargs[f.name]
            tp, _ = _unwrap_optional(hints[f.name])
            if get_origin(tp) is dict:
                v = parse_pairs(tuple(v or ()), "--" + _flag_name(f))
            elif get_origin(tp) is tuple:
                v = tuple(v or ())
            values[f.name] = v
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        def conv(v):
            if isinstance(v, dict):
                return {k: conv(v[k]) for k in v}
            if isinstance(v, (tuple, list)):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def click_options(cls) -> Callable[[Callable], Callable]:
    """Decorator adding one click option (or argument) per dataclass field of `cls`."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("cli", True) or "help" not in md:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        # click >= 8.3 takes an explicit default=None as a default and stops enforcing
        # required=True (a missing --out reached the command as None): pass defaults only
        # for fields that have one.
        given = {"default": default} if has_default else {}
        if md.get("argument"):
            params.append(click.Argument([f.name], required=not has_default, metavar=md.get("metavar"), **given))
            continue
        decl = "--" + _flag_name(f)
        kw: Dict[str, Any] = {"help": md["help"], "show_default": has_default and default not in (None, ())}
        if get_origin(tp) is dict:
            kw.update(multiple=True, metavar=md.get("metavar") or "NAME=VALUE", required=not has_default)
            kw["show_default"] = False
        elif get_origin(tp) is tuple:
            kw.update(multiple=True, metavar=md.get("metavar"), required=not has_default)
            kw["show_default"] = False
        elif tp is bool:
            if "/" not in decl and (default or optional):
                decl = f"{decl}/--no-{_flag_name(f)}"
            # Optional[bool] stays None when neither flag is given ("decide for me").
            kw.update(is_flag=True, default=None if optional else bool(default))
        elif get_origin(tp) is Literal:
            kw.update(type=click.Choice([str(a) for a in get_args(tp)]), required=not has_default, **given)
        else:
            kw.update(type={int: int, float: float, str: str}.get(tp, str),
                      required=not has_default and not optional, metavar=md.get("metavar"), **given)
        params.append(click.Option([decl, f.name], **kw))

    def deco(fn: Callable) -> Callable:
        # click applies decorators bottom-up; keep the dataclass order in --help.
        for p in reversed(params):
            fn.__click_params__ = getattr(fn, "__click_params__", [])  # type: ignore[attr-defined]
            fn.__click_params__.append(p)  # type: ignore[attr-defined]
        return fn

    return deco
