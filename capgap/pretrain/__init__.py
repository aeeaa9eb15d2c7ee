"""Training a causal LM on its own next tokens: the one training loop every trainer here builds
on (lm_module: pretraining, distillation's DistillModule, fine-tuning) and how the offline
micro teachers are made and loaded (teachers). It sits above models/ and data/, which never
train."""
