"""Data in: the DLCV layout, slice images, DICOM and RSNA sources, patient roles, uint8 datasets,
the decoded-slice cache, device-side transforms, and the synthetic CT generator."""
