"""Stage 4, the interventions beyond zero-shot: probes on cached activations (MMS, LAT, CRA,
CCS) with their calibration, trained reward models (`genies.methods.tuned`: LoRA/QLoRA and
prompt tuning) and the user's own reward models.

Imports `genies.forward` and everything below it.
"""
