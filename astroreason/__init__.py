"""astroreason: fine-tune Qwen vision-language models to classify galaxies from images or discrete image tokens."""

__version__ = "0.1.0"
