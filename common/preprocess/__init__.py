"""Per-site preprocessing: DICOM discovery, harmonised volumes, clinical harmonisation, site cache."""
