"""Tool commands of ``salmonn-symbols`` that live in their own module (registered in ``salmonn_symbols.cli``)."""
