"""The workflow's plan: config validation, the intervention registry, the jobs and paths a
config asks for, cluster resources and GPU counts, the defaults of model jobs, and the helpers
of the thin entry points in workflow_scripts/.

What the Snakefile imports, so never torch. Imports `genies.models.layout`, `genies.data` and
the top-level modules.
"""
