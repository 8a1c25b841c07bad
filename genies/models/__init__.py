"""Stage 2, the models: preparing and loading model directories, downloads from the Hugging Face
Hub (`genies.models.hub`), the tiny test model, the torch-free layout and weight sizes
(`genies.models.layout`), tokenisation (`genies.models.tokens`), the context policy and the
memory model of a model job.

Imports `genies.data` and the top-level modules. `layout`, `tokens` and `context` never import
torch (the Snakefile reads `layout` through `genies.pipeline.gpus`).
"""
