# Click-Pose (ICCV 2023) on COCO: every key and default of the reference config, plus this
# implementation's own switches at the end (their defaults reproduce the reference).
_base_ = ['coco_transformer.py']
_defines_keys_ = True  # this file introduces the keys below (configs built on it may only change them)

# ---- optimisation ----------------------------------------------------------------------------
batch_size = 2
clip_max_norm = 0.1
ddetr_lr_param = False
epochs = 50
lr = 0.0001
lr_backbone = 1e-05
lr_backbone_names = ['backbone.0']
lr_drop = 11
lr_drop_list = [33, 45]
lr_linear_proj_mult = 0.1
lr_linear_proj_names = ['reference_points', 'sampling_offsets']
multi_step_lr = False
onecyclelr = False
param_dict_type = 'default'
save_checkpoint_interval = 100
weight_decay = 0.0001

# ---- model: backbone and transformer ----------------------------------------------------------
backbone = 'resnet50'
backbone_freeze_keywords = None
batch_norm_type = 'FrozenBatchNorm2d'
cls_no_bias = False
dec_layer_number = None
dec_layers = 6
dec_n_points = 4
dec_pred_bbox_embed_share = False
dec_pred_class_embed_share = False
dec_pred_pose_embed_share = False
decoder_module_seq = ['sa', 'ca', 'ffn']
decoder_sa_type = 'sa'
dilation = False
dim_feedforward = 2048
dln_hw_noise = 0.2
dln_xy_noise = 0.2
dropout = 0.0
embed_init_tgt = False
enc_layers = 6
enc_n_points = 4
fix_refpoints_hw = -1
frozen_weights = None
hidden_dim = 256
indices_idx_list = [1, 2, 3, 4, 5, 6, 7]
modelname = 'clickpose'
nheads = 8
num_classes = 2
num_feature_levels = 4
num_patterns = 0
num_queries = 900
pe_temperatureH = 20
pe_temperatureW = 20
position_embedding = 'sine'
pre_norm = False
query_dim = 4
random_refpoints_xy = False
return_interm_indices = [1, 2, 3]
rm_detach = None
rm_self_attn_layers = None
transformer_activation = 'relu'
two_stage_bbox_embed_share = False
two_stage_class_embed_share = False
two_stage_default_hw = 0.05
two_stage_keep_all_tokens = False
two_stage_learn_wh = False
two_stage_type = 'standard'
use_checkpoint = False

# ---- keypoint queries and the feedback loop ---------------------------------------------------
feedback_inference = False  # True: AP after CLICKPOSE_Click_Number clicks
feedback_loop_NOC_test = False  # True: NoC evaluation
human_feedback = False  # True: interactive training; False: model-only training
num_body_points = 17  # coco, humanart, ochuman; crowdpose has 14
num_box_decoder_layers = 2
num_group = 50
num_group_refine = 20
num_humanfeedback_layers = None  # derived: dec_layers - num_box_decoder_layers (a number given must equal it)
only_correction = False

# ---- post-processing and evaluation ------------------------------------------------------------
nms_iou_threshold = -1.0  # > 0: box NMS at that IoU in the postprocessor and the Predictor (the reference: -1, NMS unimplemented)
no_mmpose_keypoint_evaluator = True
num_select = 50
strong_aug = False

# ---- matcher and losses -----------------------------------------------------------------------
aux_loss = True
bbox_loss_coef = 5.0
cls_loss_coef = 2.0
enc_loss_coef = 1.0
focal_alpha = 0.25
cls_quality_target = None  # 'oks': matched queries' class target is their OKS (box IoU before the keypoint layers), not 1; not in the reference
giou_loss_coef = 2.0
interm_loss_coef = 1.0
keypoints_loss_coef = 10.0
kpvis_loss_coef = 1.0
masks = False
match_unstable_error = False
matcher_type = 'HungarianMatcher'
no_interm_box_loss = False
oks_loss_coef = 4.0
set_cost_bbox = 5.0
set_cost_class = 2.0
set_cost_giou = 2.0
set_cost_keypoints = 10.0
set_cost_kpvis = 0.0
set_cost_oks = 4.0

# ---- denoising (pose error modeling) ----------------------------------------------------------
dn_attn_mask_type_list = ['match2dn', 'dn2dn', 'group2group']
dn_batch_gt_fuse = False
dn_bbox_coef = 0.5
dn_box_label_noise_ratio = 0.5
dn_box_noise_scale = 0.4
dn_keypoints_coef = 0.5
dn_kpt_label_noise_ratio = 0.5
dn_kpt_noise_scale = 0.4
dn_label_coef = 0.3
dn_labelbook_size = 100
dn_number = 50
use_dn = True

# ---- EMA --------------------------------------------------------------------------------------
ema_decay = 0.9997
ema_epoch = 0
use_ema = False

# ==== this implementation's additions (docs/deviations.md); defaults reproduce the reference ====
# Backbones (models/clickpose/backbone.py): 'resnet18/34/50/101', the original's 'swin_T_224_1k', 'swin_B_224_22k',
# 'swin_B_384_22k', 'swin_L_224_22k', 'swin_L_384_22k', or 'timm:NAME' for any timm feature model.
# backbone_weights: a local ImageNet weights file (torchvision ResNet, official Swin release, timm state dict);
# None = random initialisation. Nothing is ever downloaded.
backbone_weights = None
# backbone_trainable_stages: None = the original's choice (ResNet: layer2-4 train; Swin, timm: everything) | 'all' |
# a list of parameter-name parts, e.g. ['layer3', 'layer4']. backbone_freeze_keywords then freeze names containing one.
backbone_trainable_stages = None
click_freeze = 'none'  # 'none' (reference: clicks are not pinned) | 'round' | 'all'
click_policy = 'worst'  # simulated user's click: 'worst' (reference: largest |dx|+|dy|) | 'worst_l2' (Euclidean)
crop_marks_invisible = False  # True: keypoints cropped out of the window become unlabelled
ema_unique_params = False  # True: update each shared (aliased) tensor once per step
flip_exact = False  # True: flip keypoints as x -> w - x, like the boxes (reference: w - x - 1)
max_clicks = None  # rounds of the interactive evaluation (the NoC cap); None = K, one per keypoint (17 on COCO)
msda_backend = None  # None = fastest available; 'pytorch' | 'cpu' | 'cuda' to force one
noc_thresholds = [0.85, 0.90, 0.95]  # per-image AP thresholds of NoC@85/90/95 (the one home of this default)
# Pose error modeling: the paper's error types as optional additions to the reference's denoising noise.
pem_error_prob = 0.1  # per labelled, noised keypoint: chance of one of pem_error_types
pem_error_types = []  # any of 'jitter', 'miss', 'swap', 'inversion'; [] = the reference's noise only

# ---- datasets (datasets/__init__.py); main.py sets coco_path from --coco_path / CLICKPOSE_*_PATH ----
# dataset_file='custom': paths absolute or relative to coco_path; file_name values are relative to the image folder
custom_evaluator = 'coco'  # 'coco' (pycocotools) | 'crowdpose' (easy/medium/hard by image 'crowdIndex')
custom_flip_pairs = None  # 0-based [left, right] index pairs swapped by a horizontal flip
custom_keypoint_names = None  # list of names in annotation order; None = the built-in layout with num_body_points
custom_sigmas = None  # OKS sigmas per keypoint (already /10, as COCO's 0.026 for the nose); None = 0.05 each
custom_skeleton = None  # 0-based [a, b] limb pairs, for drawing only
custom_train_ann = None  # e.g. 'annotations/train.json'
custom_train_img = None  # e.g. 'images/train'
custom_val_ann = None
custom_val_img = None
# Keypoint layout (datasets/metadata.py) and keypoint adaptation (models/adaptation.py).
keypoint_field = 'keypoints'  # annotation field of the keypoints; 'keypoints_21' = Human-Art's 21-keypoint layout
adapt_keypoint_init = None  # --pretrain_model_path with another layout: new keypoints start from the mean of the
# source's keypoints (None) or from a chosen source keypoint: {'left_finger': 'left_wrist', ...}
