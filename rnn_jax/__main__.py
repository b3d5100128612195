"""``python -m rnn_jax``: the same as the ``rnn-jax`` command."""

import sys

from rnn_jax.cli import main

sys.exit(main())
