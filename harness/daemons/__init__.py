"""The on-demand daemons the harness can run under its scenarios, each declared by an adapter
(adapter.py, README "Daemons"): ours in Python, ours in C, or a user's."""
