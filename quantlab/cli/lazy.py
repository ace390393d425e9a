"""Commands listed before they are loaded.

``quantlab --help`` lists every command, but a command's module imports what the command runs (torch,
transformers, lm-eval: seconds). So a group names its commands as ``module:function`` targets: the listing reads
each function's docstring from its source file (``ast``, no import), and the module is imported only when the
command itself runs or prints its own help. The same lookup as the plugins' ``module:name`` entry points.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from quantlab.plugins import load

try:  # typer >= 0.26 vendors its own click; older releases use the click package
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]


@dataclass(frozen=True)
class Listed:
    """A command of a group: its name and the typer command function that runs it (``module:function``)."""

    name: str
    target: str

    @property
    def help(self) -> str:
        """The function's docstring, as typer shows it (cleaned), read from the source without importing it."""
        module, _, function = self.target.partition(":")
        return _docstrings(module).get(function, "")


@functools.cache
def _docstrings(module: str) -> dict[str, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"{module}: no such module")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    return {
        node.name: ast.get_docstring(node) or ""
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


class _NotLoaded(TyperCommand):
    """What the listing sees of a command: its name and help; running it loads the command (``LazyGroup``)."""

    def __init__(self, listed: Listed) -> None:
        super().__init__(name=listed.name, help=listed.help)
        self.listed = listed


def load_command(name: str, target: Any) -> click.Command:
    """The click command of a typer command function, a typer app or a click command (named ``name``)."""
    if isinstance(target, str):
        target = load(target)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    elif isinstance(target, click.Command):
        command = target
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A typer group whose listed commands are imported when they run, in the order given (then ``commands``)."""

    def __init__(self, *, listed: Sequence[Listed] = (), commands: Sequence[click.Command] = (), **attrs: Any):
        super().__init__(commands=[*(_NotLoaded(entry) for entry in listed), *commands], **attrs)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, (command if name is None else self.loaded(ctx, name)), rest

    def loaded(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name`` itself, loaded (the listing's ``get_command`` gives what it lists)."""
        command = self.get_command(ctx, name)
        if isinstance(command, _NotLoaded):
            command = self.commands[name] = load_command(name, command.listed.target)
        return command
