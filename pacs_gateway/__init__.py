"""DICOM gateway: what county sites send to.

C-ECHO/C-STORE SCP with deny-by-default, a durable spool, the uploader to
Orthanc, study completeness and routing.  It never imports a model.
"""
