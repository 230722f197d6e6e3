"""Training analysis on top of runs and checks: calibrate (with the broken zoo), trend, compare, monitor."""
