"""Subcommands of `ivr-engine`: one module per command, each with `register(subparsers)`."""
