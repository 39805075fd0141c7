"""Bytes on storage: remote reads and writes under one retry policy (``remote_io``), the node-local workspace
of fetched sources and cut clips, file locations and fsync, sha256 of files and streams."""
