"""The mutation fuzzer of model text (`tests/fuzzing/mutate.py`)."""
