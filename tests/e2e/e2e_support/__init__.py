"""Reusable pieces of the sbx end-to-end tests: test PKI, local upstreams, the proxy process and
clients (curl, raw sockets) that talk through it. conftest.py turns them into fixtures."""
