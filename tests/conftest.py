"""Suite-wide settings: one BLAS/OpenMP thread, since the models under test are tiny and two
threads on a busy two-core machine are many times slower than one."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402 - after the thread settings, which must precede torch's import
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for the test (small networks: one thread is fastest, two crawl on a
    busy machine; bit-identical resumes need a fixed thread count); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
