"""Multi-scale deformable attention (Zhu et al., Deformable DETR).

``MSDeformAttn`` is the module every encoder/decoder layer uses; ``ms_deform_attn`` is the functional op,
which dispatches to the fastest available backend. Importing this package never fails: the compiled
backends are optional.
"""
from .function import ms_deform_attn
from .module import MSDeformAttn
from .reference import ms_deform_attn_reference

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_reference"]
