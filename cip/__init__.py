"""cip: placeholder until its issue lands."""
