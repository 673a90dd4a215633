"""Multi-scale deformable attention (Zhu et al., Deformable DETR).

``MSDeformAttn`` is the module every encoder/decoder layer uses; ``ms_deform_attn`` is the functional op,
which dispatches to the fastest available backend: the compiled CUDA or CPU kernel (``clickpose_msda``, built by
``python -m models.clickpose.ops.build``) or the pure-PyTorch reference. Importing this package never fails:
the compiled backends are optional. ``python -m models.clickpose.ops.test`` checks them against the reference.
"""
from .function import BACKENDS, available_backends, ms_deform_attn
from .module import MSDeformAttn
from .reference import ms_deform_attn_reference

__all__ = ["BACKENDS", "MSDeformAttn", "available_backends", "ms_deform_attn", "ms_deform_attn_reference"]
