"""One exception hierarchy for trtbuild, and the table that maps it to exit codes.

Library code raises these; the CLI turns them into one line on stderr and an exit code
(a traceback only with --debug). Messages should name the file, the field and the fix.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 3


class TrtbuildError(Exception):
    """Base of every error trtbuild reports to a user."""

    exit_code = EXIT_ERROR
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        msg = str(self)
        return f"{msg} ({self.hint})" if self.hint else msg


class RecipeError(TrtbuildError):
    """A recipe file is malformed or invalid. Carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(TrtbuildError):
    exit_code = EXIT_USAGE


class StageError(TrtbuildError):
    """A stage failed while doing its work."""

    def __init__(self, stage: str, message: str, *, hint: str | None = None) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}': {message}", hint=hint)


class NotImplementedStageError(StageError):
    """A stage that is not implemented for this configuration. Never pretends to succeed."""


class GateFailed(TrtbuildError):  # noqa: N818 - reads as a verdict: "raise GateFailed"
    """A gate measured a value outside its criterion."""

    exit_code = EXIT_GATE_FAILED


class LockError(TrtbuildError):
    """Another run holds the lock of this recipe."""


class ExecutorError(TrtbuildError):
    """A stage run in a subprocess failed, timed out or returned nothing."""

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None) -> None:
        self.argv = argv
        self.returncode = returncode
        super().__init__(message)


class IntegrityError(TrtbuildError):
    """A file does not match the digest its manifest records."""


class CompatibilityError(TrtbuildError):
    """A bundle cannot run on the runtime it is being deployed to."""


class FetchError(TrtbuildError):
    """A checkpoint could not be fetched or converted."""


class QuantizeError(TrtbuildError):
    """Quantization or export failed, or no memory plan fits."""


class ServiceError(TrtbuildError):
    """A server (Triton, SeaweedFS, MLflow, vLLM) failed to start, answer or stop."""


class StoreError(TrtbuildError):
    """The bundle store refused or failed an operation."""


class RegistryError(TrtbuildError):
    """The MLflow registry refused or failed an operation."""


class GitOpsError(TrtbuildError):
    """A git reference, a desired-state file or a reconcile step is wrong or failed."""


class DriftError(GitOpsError):
    """`sync` left the repository different from the desired state (it could not fix it)."""
