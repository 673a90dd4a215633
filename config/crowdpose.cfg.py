# Click-Pose on CrowdPose: 14 keypoints (the original repo could not run this dataset).
_base_ = ['clickpose.cfg.py']

num_body_points = 14
