"""PHI detection in DICOM datasets, by the DICOM PS3.15 Annex E basic profile.

* ``profile`` -- the PS3.15 Table E.1-1 rules (generated from the standard's machine-readable copy)
* ``detect``  -- findings of one dataset: identifying attributes, private elements, free text,
                 names inside kept text, burned-in risk

Both the loaders (``core.io``, the upload gate) and de-identification (``core.deid``) use it;
it imports neither.
"""
