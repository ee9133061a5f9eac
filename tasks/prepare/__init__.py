"""The prepare-data stage: CSVs and radiology reports to a manifest of PNG slices."""
