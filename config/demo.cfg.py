# The CPU demo (`make demo`, tools/demo.py): a small Click-Pose trained from scratch in about 12 CPU minutes on the
# synthetic people of datasets.synthetic.DEMO_SCENE. Each change from the tiny model was measured: docs/demo.md.
_base_ = ['tiny.cfg.py']

# A backbone that starts from random weights needs its batch statistics and all of its stages trained (the frozen
# norms, stem and layer1 of the reference suit ImageNet-initialised backbones only).
batch_norm_type = 'BatchNorm2d'
backbone_trainable_stages = 'all'
lr = 0.001
lr_backbone = 0.001
lr_drop = 7  # tools/demo.py trains 10 epochs: the last three at lr / 10

# About 160-pixel images: a training step of 4 images in about 0.6 s on 2 cores.
data_aug_scales = [128, 144, 160]
data_aug_max_size = 240
data_aug_scales2_resize = [128, 144, 160]
data_aug_scales2_crop = [112, 160]
batch_size = 4

# Features from layer1 on (strides 4, 8, 16, 32): on a 160-pixel image the stride-8 map is 20x20, coarser than the
# 2-6 pixels within which a keypoint scores OKS 0.75; the stride-4 map lifted AP from 0.267 to 0.365 on 124 val
# images at equal epochs, for about 6% more time per step (docs/demo.md).
return_interm_indices = [0, 1, 2, 3]

# Four keypoint decoder layers: with one, the keypoints stayed at the box's mean pose; each further layer refines them
# (docs/demo.md).
dec_layers = 6
num_humanfeedback_layers = 4  # = dec_layers - num_box_decoder_layers
# 50 two-stage proposals: AP 0.267 against 0.250 with 100 and 0.215 with 300 (measured with strides 8-64, whose
# ~530 encoder tokens 300 proposals nearly exhausted; docs/demo.md)
num_queries = 50
# At most 3 people per image: 10 groups (5 train 12% faster but find fewer of the people: AP 0.22 vs 0.25).
num_group = 10
num_group_refine = 10
num_select = 10
# The keypoint layers see only their own group, so duplicates of one person keep near-equal scores that a model
# trained for minutes cannot rank; box NMS keeps the best of each (the reference declares this key, unimplemented).
nms_iou_threshold = 0.5

human_feedback = True
# clicks stay where they are made (the paper's intent; the reference default 'none' lets refinement move them)
click_freeze = 'all'
