"""rnn_jax: the recurrent language models of Dive into Deep Learning in pure JAX."""

__version__ = "0.1.0"
