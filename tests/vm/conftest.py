import pytest

from helpers import harness, results_of


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """README's main job with its embedded defaults (scenario crash, 50 kills). Session-wide:
    it builds the kernel the other VM tests then reuse."""
    proc = harness("run", "--output", str(tmp_path_factory.mktemp("runs")))
    print(proc.stdout)
    return proc, results_of(proc)
