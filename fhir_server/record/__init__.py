"""The stored record: the layout of a stored document and the keys derived from a resource, no I/O.

`documents` names the fields and converts a resource to and from its stored document; `visibility`
derives the security-label and consent visibility keys a document carries; `filters` composes
MongoDB filters on those fields. Everything here is pure, so that consent/, search/ and audit/ can
share the layout without depending on storage/, which does the I/O (docs/architecture.md).
"""
