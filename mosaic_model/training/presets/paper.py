"""The paper's language-modelling recipe: BabiStories, 12 layers, d=768, batch 512 x 512 tokens (32
sequences x 16 accumulation steps), 80,000 steps, AdamW at 5e-3 with a cosine to 1e-4
(Library/scripts/train_babistories.sh). Every field can be overridden, so the same recipe runs scaled
down (fewer layers, steps or accumulation steps)."""
task = "lm"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 512
dropout = 0.05
lr = 5e-3
min_lr_ratio = 1e-4 / 5e-3
warmup = 2000
steps = 80000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
batch_size = 32
grad_accum = 16
eval_every = 2000
eval_batches = 10
eval_batch_size = 32
