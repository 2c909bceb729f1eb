"""Loading studies (DICOM series, zip, NIfTI) into a Volume and MEDS timelines."""
