# Click-Pose (ICCV 2023) on COCO: every key and default of the reference config, plus this
# implementation's own switches at the end (their defaults reproduce the reference).
_base_ = ['coco_transformer.py']

# ---- optimisation ----------------------------------------------------------------------------
lr = 0.0001
lr_backbone = 1e-05
lr_backbone_names = ['backbone.0']
lr_linear_proj_names = ['reference_points', 'sampling_offsets']
lr_linear_proj_mult = 0.1
ddetr_lr_param = False
param_dict_type = 'default'
batch_size = 2
weight_decay = 0.0001
epochs = 50
lr_drop = 11
lr_drop_list = [33, 45]
onecyclelr = False
multi_step_lr = False
save_checkpoint_interval = 100
clip_max_norm = 0.1

# ---- model: backbone and transformer ----------------------------------------------------------
modelname = 'clickpose'
num_classes = 2
frozen_weights = None
backbone = 'resnet50'
use_checkpoint = False
dilation = False
position_embedding = 'sine'
pe_temperatureH = 20
pe_temperatureW = 20
return_interm_indices = [1, 2, 3]
backbone_freeze_keywords = None
batch_norm_type = 'FrozenBatchNorm2d'
enc_layers = 6
dec_layers = 6
pre_norm = False
dim_feedforward = 2048
hidden_dim = 256
dropout = 0.0
nheads = 8
num_queries = 900
query_dim = 4
num_patterns = 0
random_refpoints_xy = False
fix_refpoints_hw = -1
dec_layer_number = None
num_feature_levels = 4
enc_n_points = 4
dec_n_points = 4
dln_xy_noise = 0.2
dln_hw_noise = 0.2
two_stage_type = 'standard'
two_stage_bbox_embed_share = False
two_stage_class_embed_share = False
two_stage_learn_wh = False
two_stage_default_hw = 0.05
two_stage_keep_all_tokens = False
rm_detach = None
transformer_activation = 'relu'
rm_self_attn_layers = None
indices_idx_list = [1, 2, 3, 4, 5, 6, 7]
decoder_sa_type = 'sa'
decoder_module_seq = ['sa', 'ca', 'ffn']
dec_pred_bbox_embed_share = False
dec_pred_class_embed_share = False
dec_pred_pose_embed_share = False
embed_init_tgt = False
cls_no_bias = False

# ---- keypoint queries and the feedback loop ---------------------------------------------------
num_body_points = 17  # coco, humanart, ochuman; crowdpose has 14
num_group = 50
num_group_refine = 20
num_box_decoder_layers = 2
num_humanfeedback_layers = 4
human_feedback = False  # True: interactive training; False: model-only training
feedback_loop_NOC_test = False  # True: NoC evaluation
feedback_inference = False  # True: AP after CLICKPOSE_Click_Number clicks
only_correction = False

# ---- post-processing and evaluation ------------------------------------------------------------
num_select = 50
nms_iou_threshold = -1
no_mmpose_keypoint_evaluator = True
strong_aug = False

# ---- matcher and losses -----------------------------------------------------------------------
masks = False
aux_loss = True
matcher_type = 'HungarianMatcher'
set_cost_class = 2.0
set_cost_bbox = 5.0
set_cost_giou = 2.0
set_cost_keypoints = 10.0
set_cost_kpvis = 0.0
set_cost_oks = 4.0
cls_loss_coef = 2.0
bbox_loss_coef = 5.0
kpvis_loss_coef = 1.0
keypoints_loss_coef = 10.0
oks_loss_coef = 4.0
giou_loss_coef = 2.0
enc_loss_coef = 1.0
interm_loss_coef = 1.0
no_interm_box_loss = False
focal_alpha = 0.25
match_unstable_error = False

# ---- denoising (pose error modeling) ----------------------------------------------------------
use_dn = True
dn_number = 50
dn_box_noise_scale = 0.4
dn_kpt_noise_scale = 0.4
dn_kpt_label_noise_ratio = 0.5
dn_box_label_noise_ratio = 0.5
dn_label_coef = 0.3
dn_bbox_coef = 0.5
dn_keypoints_coef = 0.5
dn_batch_gt_fuse = False
dn_attn_mask_type_list = ['match2dn', 'dn2dn', 'group2group']
dn_labelbook_size = 100

# ---- EMA --------------------------------------------------------------------------------------
use_ema = False
ema_decay = 0.9997
ema_epoch = 0

# ==== this implementation's additions (docs/deviations.md); defaults reproduce the reference ====
backbone_weights = None  # local ImageNet weights file for the ResNet; None = random init, nothing is downloaded
msda_backend = None  # None = fastest available; 'pytorch' | 'cpu' | 'cuda' to force one
click_freeze = 'none'  # 'none' (reference: clicks are not pinned) | 'round' | 'all'
ema_unique_params = False  # True: update each shared (aliased) tensor once per step
crop_marks_invisible = False  # True: keypoints cropped out of the window become unlabelled
flip_exact = False  # True: flip keypoints as x -> w - x, like the boxes (reference: w - x - 1)
max_clicks = 17  # rounds of the interactive evaluation
noc_thresholds = [0.85, 0.90, 0.95]
# Pose error modeling: the paper's error types as optional additions to the reference's denoising noise.
pem_error_types = []  # any of 'jitter', 'miss', 'swap', 'inversion'; [] = the reference's noise only
pem_error_prob = 0.1  # per labelled, noised keypoint: chance of one of pem_error_types

# ---- datasets (datasets/__init__.py); main.py sets coco_path from --coco_path / CLICKPOSE_*_PATH ----
# dataset_file='custom': paths absolute or relative to coco_path; file_name values are relative to the image folder
custom_train_ann = None  # e.g. 'annotations/train.json'
custom_train_img = None  # e.g. 'images/train'
custom_val_ann = None
custom_val_img = None
custom_keypoint_names = None  # list of names in annotation order; None = the built-in layout with num_body_points
custom_flip_pairs = None  # 0-based [left, right] index pairs swapped by a horizontal flip
custom_sigmas = None  # OKS sigmas per keypoint (already /10, as COCO's 0.026 for the nose); None = 0.05 each
custom_skeleton = None  # 0-based [a, b] limb pairs, for drawing only
custom_evaluator = 'coco'  # 'coco' (pycocotools) | 'crowdpose' (easy/medium/hard by image 'crowdIndex')
