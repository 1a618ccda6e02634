"""``python -m shiftaudit`` runs the command-line interface."""

from shiftaudit.cli import main

if __name__ == "__main__":
    main()
