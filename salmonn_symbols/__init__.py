"""salmonn_symbols: symbol discovery for SALMONN speech LLMs on PyTorch Lightning."""

__version__ = "0.1.0"
