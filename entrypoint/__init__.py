"""A process entrypoint for job workers in containers: a PID-1 init and a worker pool."""

__version__ = "0.1.0"
