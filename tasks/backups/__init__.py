"""Backups of node datadirs, configs and databases: encryption, manifests, retention."""
