"""otdistill: generative dataset distillation with optimal transport."""

__version__ = "0.1.0"
