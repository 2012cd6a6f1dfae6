"""RegBench's in-context language learning (seq_icl's ICLL recipe): the Memory Mosaic of 2 layers, d=128,
8 heads, P=448, with C-mem attention and P-mem dropout 0.05 (lib-naive), or ``model = "gpt"``, the
transformer of the same depth and width; 200 epochs of AdamW on every parameter with timm's cosine,
fp32, and the test metrics from the weights of best validation loss. The evaluations come every
epoch (``eval_every`` None, filled in from the epoch length)."""
task = "icl"
n_layer = 2
n_head = 8
n_embd = 128
pmem_size = 448
dropout = 0.05
attn_dropout = 0.05
kernels = "fused"
max_string_len = 49
num_train = 100
num_test = 1000
lr = 5e-4
weight_decay = 0.1
decay_all = True
beta1 = 0.9
beta2 = 0.999
batch_size = 32
epochs = 200
schedule = "regbench"
min_lr_ratio = 0.1
grad_clip = 1.0
dtype = "float32"
final_from = "best"
eval_every = None
