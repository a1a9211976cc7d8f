"""Scientific command-line applications that caesar-rest runs as jobs."""
