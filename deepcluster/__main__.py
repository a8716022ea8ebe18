"""The `deepcluster` command's entry point (also `python -m deepcluster`).

It imports the command (`deepcluster.cli`, and through it torch) only when called. A spawned worker process
imports its parent's main module again, which for the installed `deepcluster` script is a module importing
this one: so the input store's decoding workers (`deepcluster.decode`) start without torch.
"""

import sys


def main() -> int:
    from deepcluster.cli import main as run_command

    return run_command()


if __name__ == "__main__":
    sys.exit(main())
