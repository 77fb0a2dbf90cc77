"""Saved runs judged: pure functions from a run directory to facts, a verdict and its reports.

Nothing here starts a process, a guest or a build (tests/unit/test_layout.py holds that), so
any saved run can be judged again with the current rules."""
