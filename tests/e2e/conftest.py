"""The job tests' data fixtures, shared with the end-to-end tests."""

from ..jobs.test_build_dataset import source  # noqa: F401 (a fixture)
from ..jobs.test_train import dataset  # noqa: F401 (a fixture)
