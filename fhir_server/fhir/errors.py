"""Errors raised anywhere in the server and rendered once, as an OperationOutcome, by api/errors.py.

Issue codes: http://hl7.org/fhir/R4/valueset-issue-type.html
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str  # fatal | error | warning | information
    code: str  # FHIR issue-type code: invalid, structure, required, value, not-found, forbidden...
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, object]:
        issue: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, object]:
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir() for issue in issues]}


@dataclass
class FhirError(Exception):
    """An error with its HTTP status and the OperationOutcome issues that explain it."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(issue.diagnostics for issue in self.issues)

    @classmethod
    def of(
        cls,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> FhirError:
        return cls(status, [Issue("error", code, diagnostics, expression)], dict(headers or {}))


def bad_request(diagnostics: str, *, code: str = "invalid", expression: tuple[str, ...] = ()) -> FhirError:
    return FhirError.of(400, code, diagnostics, expression=expression)


def unauthorized(diagnostics: str) -> FhirError:
    return FhirError.of(401, "login", diagnostics, headers={"WWW-Authenticate": 'Bearer realm="fhir"'})


def forbidden(diagnostics: str) -> FhirError:
    return FhirError.of(403, "forbidden", diagnostics)


def not_found(resource_type: str, resource_id: str | None = None) -> FhirError:
    """404 for unknown *and* hidden resources: the wording never reveals which."""
    what = f"{resource_type}/{resource_id}" if resource_id else resource_type
    return FhirError.of(404, "not-found", f"Resource {what} is not known")


def gone(resource_type: str, resource_id: str) -> FhirError:
    return FhirError.of(410, "deleted", f"Resource {resource_type}/{resource_id} has been deleted")


def method_not_allowed(diagnostics: str) -> FhirError:
    return FhirError.of(405, "not-supported", diagnostics)


def conflict(diagnostics: str) -> FhirError:
    return FhirError.of(409, "conflict", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError.of(412, "conflict", diagnostics)


def unprocessable(issues: list[Issue]) -> FhirError:
    return FhirError(422, issues)


def unavailable(diagnostics: str) -> FhirError:
    return FhirError.of(503, "transient", diagnostics)


class AuditUnavailable(Exception):
    """The AuditEvent could not be persisted: the request must fail (503) and write nothing.

    Raised by the audit sink (audit/sink.py) and handled by the storage transaction that commits a
    write with its AuditEvent and by the pipeline (interactions/pipeline.py), which answers 503.
    """
