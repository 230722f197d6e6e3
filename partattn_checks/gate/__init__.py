"""The pytest gate: the plugin's hooks, options, per-process state, items, scheduling, reports."""
