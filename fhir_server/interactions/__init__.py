"""The FHIR interactions as plain async functions, each through the one pipeline (interactions/pipeline.py):
scope check, consent, storage, audit."""
