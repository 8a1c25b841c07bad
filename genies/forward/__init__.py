"""Stage 3, forward passes: the forward job (one model load per dataset), log-probability
scoring with prefix reuse, activation capture, and the predictions that need nothing more than
those scores (zero-shot, few-shot, random).

Imports `genies.pipeline`, `genies.models`, `genies.data` and the top-level modules.
`zero_shot` and `baselines` never import torch (their prediction jobs run on CPU nodes).
"""
