import pytest


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    """Every module here runs on one torch thread (``tests/conftest.py``)."""
    yield
