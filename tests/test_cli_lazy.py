"""The CLI's lazy listing (quantlab.cli.lazy): what `quantlab --help` lists is what each command says of itself,
every listed target exists, and the start imports none of the heavy libraries."""

import subprocess
import sys

import pytest
from typer.core import TyperGroup

from quantlab.cli import app as cli_app
from quantlab.cli.lazy import LazyGroup, Listed, load_command
from quantlab.zoo.cli import zoo_group

GROUPS = [cli_app.quantlab_group(), cli_app.bench, zoo_group]


def _listed(group: LazyGroup):
    return [entry for entry in (getattr(c, "listed", None) for c in group.commands.values()) if entry is not None]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_every_listed_command_loads_and_lists_its_own_help(group):
    entries = _listed(group)
    assert entries, f"{group.name} lists nothing lazily"
    for entry in entries:
        command = load_command(entry.name, entry.target)
        assert command.name == entry.name
        # typer takes a command's help from its function's docstring, cleaned as inspect.cleandoc does; the
        # listing read it from the source with ast: the two must agree word for word
        assert command.help and entry.help == command.help, entry


def test_the_listing_keeps_the_written_order_and_names_every_command():
    import typer

    ctx = typer.Context(cli_app.quantlab_group())
    names = cli_app.quantlab_group().list_commands(ctx)
    assert names[: len(cli_app.COMMANDS)] == [entry.name for entry in cli_app.COMMANDS]
    assert names[len(cli_app.COMMANDS) :] == ["bench", "zoo"]
    assert isinstance(cli_app.quantlab_group().loaded(ctx, "bench"), TyperGroup)


def test_a_command_is_loaded_when_it_runs_and_not_before():
    group = LazyGroup(name="g", listed=[Listed("info", "quantlab.zoo.commands:zoo_info")])
    import typer

    ctx = typer.Context(group)
    listed = group.get_command(ctx, "info")
    assert listed is not None and listed.name == "info" and listed.callback is None  # listed, not loaded
    name, command, rest = group.resolve_command(ctx, ["info", "--json"])
    assert (name, rest) == ("info", ["--json"])
    assert command is not None and command.callback is not None and command.callback.__name__ == "zoo_info"
    assert group.get_command(ctx, "info") is command  # loaded once, kept


def test_a_listed_target_in_a_missing_module_fails_at_the_listing():
    with pytest.raises(LookupError, match="quantlab.no_such_module"):
        _ = Listed("x", "quantlab.no_such_module:f").help


def test_help_imports_neither_torch_nor_transformers_nor_lm_eval():
    code = (
        "import sys\n"
        "from quantlab.cli import main\n"
        "sys.argv = ['quantlab', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'lm_eval', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert " build " in result.stdout and " zoo " in result.stdout
    assert "HEAVY []" in result.stderr, result.stderr


def test_import_quantlab_is_cheap_and_its_api_loads_on_use():
    code = (
        "import sys, quantlab\n"
        "before = 'torch' in sys.modules\n"
        "recipe = quantlab.load_recipe('mxfp4')\n"
        "print(before, recipe.name, 'torch' in sys.modules)\n"
        "try:\n    quantlab.no_such_function\nexcept AttributeError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[0] == "False mxfp4 True", result.stderr[-2000:]
    assert lines[1] == "module 'quantlab' has no attribute 'no_such_function'"
