"""Learning from idle time: the benchmark suite, the maintenance window and the request optimizer."""
