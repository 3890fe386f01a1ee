"""sami: placeholder until its issue lands."""
