"""structkd: structural knowledge distillation for structured predictors."""

__version__ = "0.1.0"


def load(model_dir, **options):  # type: ignore[no-untyped-def]
    """A predictor for a model directory (trained or exported): ``structkd.load(dir).predict(
    texts)``. See ``structkd.api.load``."""
    from structkd.api import load as load_model

    return load_model(model_dir, **options)
