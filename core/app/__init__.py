"""Services of the Streamlit app that are not UI (this package never imports streamlit).

* ``paths``        -- the repository root, shipped assets, the app's data folder
* ``demo_install`` -- the demo cohort and its models, built once on disk
* ``workspace``    -- private per-session folders for uploads; cohort zips unpacked into them
* ``viewer``       -- axial / coronal / sagittal planes of a volume and the slice a case opens on
* ``reference``    -- the cohort's Kaplan-Meier curve and a model's risk groups, for one case's context
"""
