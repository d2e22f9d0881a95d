"""DICOMweb: studies pulled from a PACS (QIDO-RS, WADO-RS) or pushed to the gateway (STOW-RS style), each MR slice
classified through inference as /v1/predict does, and the results stored back as TID 1500 Structured Reports.

settings.py   what the gateway is told about the PACS (a mixin of the gateway's one Settings object)
pacs.py       the DICOMweb client (dicomweb-client, blocking, run in threads) and its errors
classify.py   each slice through inference, the per-slice answers and the study summary
frames.py     one frame of a multi-frame instance as a one-frame file (cut, not decoded)
report.py     one Comprehensive 3D SR per classified series on TID 1500 (highdicom)
fhir.py       the same result as a FHIR R5 DiagnosticReport with Observations (fhir.resources), on request
push.py       a multipart/related body of DICOM instances, read within bounds
study.py      the way through: pull or push, classify, report, store
schemas.py    the JSON answer

Only settings, pacs and schemas are imported at the gateway's start-up; the rest (pydicom, highdicom, fhir.resources)
on the first study request (routes/studies.py).
"""
