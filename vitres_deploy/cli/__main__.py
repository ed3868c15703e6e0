"""`python -m vitres_deploy.cli`: the command line (used by torchrun)."""

from . import main

main()
