"""Resource rules: memory growth, data-loading stalls, throughput drops."""
