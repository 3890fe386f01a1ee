"""decoding: placeholder until its issue lands."""
