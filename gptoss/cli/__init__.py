"""The ``gptoss`` command line: one module a subcommand, each with ``add_parser`` and ``run``."""
