"""A CSV of points in any 3D volumes (NIfTI, NRRD, MHA, DICOM), N classes: the template's own-data route."""
