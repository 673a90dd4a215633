# Keypoint adaptation (the paper's third scenario): Human-Art's 21 keypoints (COCO's 17 + left/right finger,
# left/right toe, from the annotations' `keypoints_21` field), fine-tuned from a 17-keypoint COCO checkpoint
# (--pretrain_model_path). The 17 known keypoints keep their weights; each new one starts from its nearest
# known joint (finger <- wrist, toe <- ankle). See docs/training.md, "Keypoint layouts and keypoint adaptation".
_base_ = ['clickpose.cfg.py']

num_body_points = 21
keypoint_field = 'keypoints_21'
adapt_keypoint_init = {'left_finger': 'left_wrist', 'right_finger': 'right_wrist',
                       'left_toe': 'left_ankle', 'right_toe': 'right_ankle'}
