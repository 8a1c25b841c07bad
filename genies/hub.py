"""The Hugging Face Hub's failures, explained once for models (`genies.models.hub`) and datasets
(`genies.data.distributions`): what went wrong and what the user can do about it."""

from __future__ import annotations

TOKEN_ADVICE = "set HF_TOKEN to a token that can read it, or run `hf auth login`"


def explain_hub_error(exc: Exception, repo: str, revision: str, kind: str = "model") -> str | None:
    """The message for a huggingface_hub exception raised while fetching `repo` at `revision`
    (`kind`: "model" or "dataset"); None for any other exception (the caller re-raises it)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
    if isinstance(exc, GatedRepoError):  # first: it is a RepositoryNotFoundError too
        response = getattr(exc, "response", None)
        sent = response is not None and response.status_code == 403
        why = "your token has not been granted access" if sent else "no token was sent"
        return (
            f"the repository is gated and {why}; accept its licence on {page} with your "
            f"account, then {TOKEN_ADVICE}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such repository on the Hub (check the id; if it is private, {TOKEN_ADVICE})"
    if isinstance(exc, RevisionNotFoundError):
        return f"the repository has no revision {revision!r} (a branch, tag or full commit hash)"
    if isinstance(exc, DisabledRepoError):
        return "the repository has been disabled on the Hub"
    if isinstance(exc, HFValidationError):
        return f"not a valid repository id or revision ({exc})"
    if isinstance(exc, IncompleteSnapshotError):
        return (
            f"the local Hugging Face cache holds only part of it ({exc}); run the workflow once "
            "where the Hub can be reached"
        )
    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled):
        return (
            f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot "
            "be reached (HF_HUB_OFFLINE is set, or no network): run the workflow once where the "
            f"Hub can be reached, with the same HF_HOME (or `hf download` the {kind} there)"
        )
    return None
