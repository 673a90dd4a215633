"""Helpers shared by the tests (``from tests.helpers import ...``): a free port, config loading, random ground
truth, small model inputs. The interactive-evaluation oracle is ``tests.helpers.oracle`` (imported on use: it
pulls in the engine)."""
from .configs import CONFIG_DIR, REPO, config_defaults, config_values, load_args
from .ground_truth import make_targets, random_boxes, random_gt, random_keypoints, random_targets
from .model_inputs import encoded_session, layout, make_images
from .ports import free_port

__all__ = ["CONFIG_DIR", "REPO", "config_defaults", "config_values", "encoded_session", "free_port", "layout",
           "load_args", "make_images", "make_targets", "random_boxes", "random_gt", "random_keypoints",
           "random_targets"]
