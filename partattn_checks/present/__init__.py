"""What people see: pages, check figures, the visualization guide's API."""
