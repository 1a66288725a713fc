"""Fixtures of dgmlang's pytest plugin for these tests, and the `slow` marker.

Installed, the plugin loads through its `pytest11` entry point; importing the fixtures here
keeps these tests working from a plain checkout as well (a conftest's fixtures take
precedence over a plugin's of the same name, so both can be present).
"""
from dgmlang.pytest_plugin import (  # noqa: F401 - fixtures are found by name
    dgm_plot_dir,
    dgm_sbc,
    dgm_seed,
    dgm_single_thread,
    dgm_train,
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a large version of a property (run with DGM_SLOW=1)")
