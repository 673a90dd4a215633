"""Shared utilities: configuration, tensors, boxes, distributed helpers, logging."""
