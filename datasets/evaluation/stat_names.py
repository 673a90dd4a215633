"""The one home of the names of the numbers in the stats lists, per scorer, in the scorer's order.

Log keys keep the reference's names: 'coco_eval_bbox', 'coco_eval_keypoints_detr'.
"""
from __future__ import annotations

BBOX_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = {
    "coco": ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"),
    "crowdpose": ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"),
}
STAT_KEYS = {"bbox": "coco_eval_bbox", "keypoints": "coco_eval_keypoints_detr"}
KEYPOINT_STATS_KEY = STAT_KEYS["keypoints"]
# the key under which per-image evaluators return {image_id: keypoint AP} (NoC's input)
PER_IMAGE_AP_KEY = "per_image_ap"
