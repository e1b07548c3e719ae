"""Benchmarks: scripts that print figures (BENCHMARKS.md). Run them from the repository root as
modules, `python -m bench.model`, `python -m bench.service`, ...; tests import bench.server."""
