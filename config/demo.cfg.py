# The CPU demo: the tiny model on small images of the synthetic dataset (tools/demo.py, `make demo`).
_base_ = ['tiny.cfg.py']

data_aug_scales = [192, 224, 256]
data_aug_max_size = 384
data_aug_scales2_resize = [192, 224, 256]
data_aug_scales2_crop = [160, 256]
batch_size = 4
lr = 0.001
lr_backbone = 0.0001
lr_drop = 1000
human_feedback = True
# clicks stay where they are made (the paper's intent; the reference default 'none' lets refinement move them)
click_freeze = 'all'
