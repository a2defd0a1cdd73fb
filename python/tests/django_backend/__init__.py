"""The Django backend's tests (a package, so that its conftest is not imported as
``conftest``, the name of the suite's own)."""
