"""``python -m robustkit.cli`` runs the command line."""

from robustkit.cli import main

main()
