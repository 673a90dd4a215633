# A tiny Click-Pose for CPU tests and the demo: ResNet-18, 64 channels, 1 encoder and 3 decoder layers.
# Images of 256x320 give 1700 encoder tokens (>= num_queries). Everything else is inherited.
_base_ = ['clickpose.cfg.py']

backbone = 'resnet18'
hidden_dim = 64
nheads = 4
dim_feedforward = 128
enc_layers = 1
dec_layers = 3
num_queries = 300
num_group = 20
num_group_refine = 10
dn_number = 10
num_select = 20
