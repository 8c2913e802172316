"""`python -m core.cli ...` runs the `datadebug` command."""

from core.cli import main

main()
