"""Benchmarks: measure and print, never assert. Run with `.venv/bin/python -m benchmarks` (or `make bench`).

All traffic stays on 127.0.0.1: Azurite, the tenant emulator (its own process) and the app (a child process).
"""
