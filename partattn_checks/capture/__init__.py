"""Recording attention: what to record (selection), the exact streaming recorder, the record, its metrics,
the run spec and the adapter for upstream-style pipelines."""
