"""`python -m bot` is the same as the `orchestrator` console script."""

from bot.cli import main

if __name__ == "__main__":
    main()
