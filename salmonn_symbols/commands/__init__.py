"""The ``salmonn-symbols`` commands other than ``fit``/``validate``/``test``: one module per command."""
