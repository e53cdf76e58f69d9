"""Backups of nodes: client-side encryption (`crypto`) and the manifest that says what a backup holds (`manifest`).

Both stand on the object store (`tasks.objectstore`); the flows that take,
verify and restore backups build on these.
"""
