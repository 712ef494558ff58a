"""The run directory: the documented, versioned files between recorder and analysis."""
