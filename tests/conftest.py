"""Suite-wide test setup.

- ``@pytest.mark.gpu`` tests are skipped, with the reason, where torch sees no
  CUDA device (``make test`` also deselects them with ``-m "not gpu"``).
- Every test gets a fresh process-wide registry afterwards, and its knob
  overrides are rolled back, so registrations and CLI flags never leak into
  the next test.
- Hypothesis runs one fixed profile: no deadline (2 shared CPU cores make
  timings noisy), a modest example count, and in CI (``CI`` set) a
  derandomized search with no example database, so a CI run is reproducible.
  Pick another with ``--hypothesis-profile``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from sparsec import knobs
from sparsec.registry import reset_registry

settings.register_profile(
    "sparsec-dev",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "sparsec-ci",
    deadline=None,
    max_examples=20,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The test suite, not sparsec, reads CI: sparsec's own settings live in knobs.py.
settings.load_profile("sparsec-ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "sparsec-dev")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch  # only when a gpu test was collected

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolate_registry_and_knobs():
    """Roll back knob overrides and give the next test a fresh registry."""
    with knobs.scope():
        yield
    reset_registry()
