"""CVAT's serverless (Nuclio) detector function: function.yaml and its handler, main.py (see docs/cvat.md)."""
