"""Analyses a clinical paper prints beside AUROC, run at the evaluating site on its own data:
acquisition-parameter audit, subgroup AUROCs, and model explanations (Grad-CAM, Integrated Gradients)."""
