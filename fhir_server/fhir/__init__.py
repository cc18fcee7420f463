"""FHIR helpers shared by every package: interaction codes, errors, resource constants."""
