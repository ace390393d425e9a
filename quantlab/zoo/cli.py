"""``quantlab zoo``: the embedded reference MoE's commands, listed for the CLI (the plugin registers this group).

The CLI loads this module at every start, so it only names the commands; ``quantlab.zoo.commands`` holds them and
is imported when one runs.
"""

from __future__ import annotations

from quantlab.cli.lazy import LazyGroup, Listed

zoo_group = LazyGroup(
    name="zoo",
    listed=tuple(Listed(name, f"quantlab.zoo.commands:zoo_{name}") for name in ("train", "score", "info", "synth")),
    help="The embedded reference MoE (tiny-gpt-oss): train, score, info; synthetic checkpoints of real shapes.",
    no_args_is_help=True,
)
