"""The ``quantlab`` commands: each parses its arguments, calls one library function, and renders the result
(``quantlab.cli.render``)."""

from __future__ import annotations

import functools
import logging
import sys

import typer
from rich.console import Console

from quantlab.cli.lazy import LazyGroup, Listed, load_command
from quantlab.errors import UserError
from quantlab.plugins import registry

try:  # typer >= 0.26 vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

_COMMANDS = "quantlab.cli.commands"

# The commands, in the order --help lists them; each module holds one family of them and is imported when one of
# its commands runs (quantlab.cli.lazy), so that `quantlab --help` starts without torch, transformers and lm-eval.
COMMANDS = (
    Listed("build", f"{_COMMANDS}.variants:build_command"),
    Listed("import", f"{_COMMANDS}.variants:import_command"),
    Listed("measure", f"{_COMMANDS}.stages:measure_command"),
    Listed("eval", f"{_COMMANDS}.stages:eval_command"),
    Listed("attribute", f"{_COMMANDS}.stages:attribute_command"),
    Listed("sweep", f"{_COMMANDS}.stages:sweep_command"),
    Listed("serve", f"{_COMMANDS}.serving:serve_command"),
    Listed("audit", f"{_COMMANDS}.serving:audit_command"),
    Listed("report", f"{_COMMANDS}.lab:report_command"),
    Listed("demo", f"{_COMMANDS}.lab:demo"),
)
BENCH_COMMANDS = tuple(
    Listed(name, f"{_COMMANDS}.bench:{function}")
    for name, function in (
        ("formats", "bench_formats"),
        ("build-memory", "bench_build_memory"),
        ("families", "bench_families"),
        ("ray", "bench_ray"),
        ("measure", "bench_measure"),
        ("serve", "bench_serve_command"),
        ("audit", "bench_audit_command"),
    )
)

bench = LazyGroup(
    name="bench",
    listed=BENCH_COMMANDS,
    help="Benchmarks (speed and quality), as ratios against references timed in the same run.",
    no_args_is_help=True,
)


@functools.cache
def quantlab_group() -> LazyGroup:
    """The ``quantlab`` command: the lab's commands, ``bench``, then each plugin's. Built on first use, not at
    import: the plugin registry imports every plugin, and a plugin may import the CLI's modules (the zoo's group
    is a ``LazyGroup``). A plugin's command object is loaded at every start, so a plugin keeps its module light."""
    plugins = [load_command(name, target) for name, target in registry().commands]
    return LazyGroup(
        name="quantlab",
        listed=COMMANDS,
        commands=[bench, *plugins],
        help="Quantization impact lab for Mixture-of-Experts language models.",
        no_args_is_help=True,
    )


def _given_value(param) -> str | None:
    """What the user typed for an option that failed to parse, read back from the command line."""
    for opt in getattr(param, "opts", None) or []:
        for i, arg in enumerate(sys.argv):
            if arg == opt and i + 1 < len(sys.argv):
                return sys.argv[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1 :]
    return None


def _quiet_third_party_import_noise() -> None:
    # transformers imports torchao whenever it is installed (the dev extra), and torchao logs a warning for
    # each CUDA-only kernel library it cannot load on CPU, and torch one per enum torchao registers. They
    # are not about anything the user did; nor is bitsandbytes' warning that an optional CPU kernel package
    # (`kernels`, a hub download) is missing.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# Options whose value may be left out (typer has no optional-value options): ``--ray`` alone means a local cluster.
OPTIONAL_VALUES = {"--ray": "local"}


def _optional_values(args: list[str]) -> list[str]:
    """``args`` with the implied value after an optional-value option given bare (last, or before an option)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    """Entry point: runs the app, turning usage mistakes and ``UserError`` into one line and exit code 2."""
    _quiet_third_party_import_noise()
    try:
        quantlab_group().main(args=_optional_values(sys.argv[1:]), prog_name="quantlab", standalone_mode=False)
    except UserError as error:
        Console(stderr=True).print(f"error: {error}", markup=False, soft_wrap=True)
        sys.exit(2)
    except click_exceptions.NoArgsIsHelpError as error:
        sys.stdout.write(error.ctx.get_help() + "\n")
        sys.exit(0)
    except click_exceptions.UsageError as error:
        where = f"{error.ctx.command_path}: " if error.ctx else ""
        message = " ".join(error.format_message().split())
        given = _given_value(getattr(error, "param", None))
        if given is not None:
            message += f" (got {given!r})"
        Console(stderr=True).print(f"error: {where}{message} (see --help)", markup=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
