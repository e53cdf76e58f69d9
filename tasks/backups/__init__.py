"""Backups of node datadirs and databases: manifests, retention, and the object store they live in."""
