"""Thin trigger adapters. Each module holds one Blueprint; the logic lives in `shared/`."""
