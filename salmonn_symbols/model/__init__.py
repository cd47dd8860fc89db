"""The SALMONN speech LLM as plain ``nn.Module`` components: no device, precision or distributed code."""
