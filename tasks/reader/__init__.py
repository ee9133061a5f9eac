"""The DICOM reader: one tomosynthesis volume's requested frames as 8-bit images."""
