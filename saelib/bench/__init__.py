"""Benchmarks, apart from the library's data path: `python -m saelib.bench collect|train|explorer|scale`.

Each command is a module here that uses only saelib's public API; `timing` measures wall time, CPU
share and peak RSS. Ratios are measured side by side in one process, because the machines are
shared: a timing whose CPU share (process CPU time / (wall time x cores)) is below 0.9 did not get
all cores, is marked noisy and should be discarded.
"""
