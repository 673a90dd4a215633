# The CPU demo (`make demo`, python -m tools.demo): a small Click-Pose trained from scratch in minutes on the CPU, on
# the synthetic people of datasets.synthetic.DEMO_SCENE. Why each setting: docs/demo.md; the measurements behind
# them: docs/benchmarks.md ("Demo configuration choices").
_base_ = ['tiny.cfg.py']

# A backbone that starts from random weights needs its batch statistics and all of its stages trained (the frozen
# norms, stem and layer1 of the reference suit ImageNet-initialised backbones only).
batch_norm_type = 'BatchNorm2d'
backbone_trainable_stages = 'all'
lr = 0.001
lr_backbone = 0.001
lr_drop = 7  # tools.demo trains 10 epochs: the last three at lr / 10

# About 160-pixel images, so that a training step of 4 images takes well under a second on 2 cores.
data_aug_scales = [128, 144, 160]
data_aug_max_size = 240
data_aug_scales2_resize = [128, 144, 160]
data_aug_scales2_crop = [112, 160]
batch_size = 4

# Features from layer1 on (strides 4, 8, 16, 32): on a 160-pixel image the stride-8 map is 20x20, coarser than the
# few pixels within which a face keypoint or a wrist scores well in OKS; the stride-4 map costs little more time.
return_interm_indices = [0, 1, 2, 3]

# Four keypoint decoder layers: with one, the keypoints stay at the box's mean pose; each further layer refines them.
dec_layers = 6
# 50 two-stage proposals: better than 100 or 300, which take most of a small image's encoder tokens.
num_queries = 50
# At most 3 people per image: 10 groups (5 train faster but find fewer of the people).
num_group = 10
num_group_refine = 10
num_select = 10
# The keypoint layers see only their own group, so duplicates of one person keep near-equal scores that a model
# trained for minutes cannot rank; box NMS keeps the best of each (the reference declares this key, unimplemented).
nms_iou_threshold = 0.5

human_feedback = True
# clicks stay where they are made (the paper's intent; the reference default 'none' lets refinement move them)
click_freeze = 'all'
