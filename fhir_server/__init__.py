"""fhir-server: a FHIR R4 server where consent decides every access and every interaction is audited."""

__version__ = "0.1.0"
__all__ = ["__version__"]
