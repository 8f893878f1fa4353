"""Benchmarks of lbsync: `python -m bench.bench_model` (in-process, no engine) and
`python -m bench.bench_daemon` (the daemon in-process against the lab's real engine)."""
