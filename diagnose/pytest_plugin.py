"""pytest plugin: the `loop_trace` fixture (registered through the pytest11 entry point)."""
