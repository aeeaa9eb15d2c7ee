"""Modeling files written beside non-uniform students, one per family (see capgap.models.remote_code).

Each file is a complete module that imports only torch and transformers: it is copied as is
into the student folder, so the student loads where capgap is not installed.
"""
