"""Command-line adapters: one module per ``python -m core`` command.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. They parse and print; the work is done by core modules.
"""
