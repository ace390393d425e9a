"""The commands, one module per family; ``quantlab.cli.app`` registers them."""
