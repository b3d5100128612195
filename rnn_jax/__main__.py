"""``python -m rnn_jax`` and the ``rnn-jax`` command: the signal handlers first, then the
command line (``rnn_jax.cli``), whose imports take a tenth of a second."""

import sys

from rnn_jax.signals import exit_while_starting


def main() -> int:
    exit_while_starting()
    from rnn_jax.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
