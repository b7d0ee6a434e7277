"""Session fixtures shared by test modules."""
from tests.engine_fixtures import tiny_models  # noqa: F401
