"""structkd: structural knowledge distillation for structured predictors."""

__version__ = "0.1.0"
