"""Click-Pose: ED-Pose detector with pose-error-modeling queries and a click refinement routine."""
from .build import build_clickpose, build_postprocessors
from .clickpose import ClickPose
from .encoder import EncoderState
from .feedback import ClickSimulator, Refinement, run_click_rounds
from .postprocess import PostProcess

__all__ = ["ClickPose", "ClickSimulator", "EncoderState", "PostProcess", "Refinement", "build_clickpose",
           "build_postprocessors", "run_click_rounds"]
