"""Online experiments: what the server's champion/challenger traffic showed."""
