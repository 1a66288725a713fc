"""Suite-wide settings: one BLAS/OpenMP thread, since the models under test are tiny and two
threads on a busy two-core machine are many times slower than one."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
