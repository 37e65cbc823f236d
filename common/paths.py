"""Where the shipped public tables live (``data/`` at the repository root)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
MAMA_MIA_TABLE = DATA_DIR / "mama-mia" / "clinical_and_imaging_info.xlsx"
DUKE_CLINICAL = DATA_DIR / "duke" / "Clinical_and_Other_Features.xlsx"
DUKE_BOXES = DATA_DIR / "duke" / "Annotation_Boxes.xlsx"
ISPY2_CLINICAL = DATA_DIR / "ispy2" / "ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx"
ISPY2_MRI_FEATURES = DATA_DIR / "ispy2" / "Multi-feature-MRI-NACT-Data.xlsx"
ISPY1_CLINICAL = DATA_DIR / "ispy1" / "I-SPY 1 All Patient Clinical and Outcome Data.xlsx"
