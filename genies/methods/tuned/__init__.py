"""Trained reward models: the model wrapper, its training data, resumable training with
checkpoints, and the tune job that trains once and predicts every dataset it is evaluated on."""
