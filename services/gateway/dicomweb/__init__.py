"""DICOMweb: studies pulled from a PACS (QIDO-RS, WADO-RS) or pushed to the gateway (STOW-RS style), each MR slice
classified through inference as /v1/predict does, and the results stored back as TID 1500 Structured Reports.

settings.py   what the gateway is told about the PACS (a mixin of the gateway's one Settings object)
pacs.py       the DICOMweb client (dicomweb-client, blocking, run in threads) and its errors
instances.py  what a study holds: MR slices to classify, everything else skipped with its reason
classify.py   each slice through inference, the per-instance answers and the study summary
report.py     one Comprehensive 3D SR per classified series on TID 1500 (highdicom)
push.py       a multipart/related body of DICOM instances, read within bounds
schemas.py    the JSON answer
"""
