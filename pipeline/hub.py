"""model.path may name a Hugging Face Hub model instead of a directory. Every process that loads the
model (the driver, the learner, each rollout worker, on whatever node it runs) turns it into a local
snapshot directory of the Hub cache, so all loading code reads a plain directory. Where the cache
lives, offline mode and the token are huggingface_hub's own settings from each process's environment
(HF_HOME, HF_HUB_OFFLINE, HF_TOKEN)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import RlpostError


class ModelNotAvailable(RlpostError):
    """model.path is neither a local directory nor a Hub model this process can get."""


def resolve_model(path: str, revision: str | None = None) -> str:
    """The local directory of model `path`: the path itself when it exists here, else the snapshot of
    the Hub model `path` at `revision` (None = main), from the cache or, when online, downloaded."""
    local = Path(path).expanduser()
    if local.exists():
        if revision is not None:
            raise ModelNotAvailable(f"model.revision={revision!r} needs a Hub id, but model.path={path!r} is a local directory")
        return str(local)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

    revision = revision or constants.DEFAULT_REVISION
    try:
        return snapshot_download(path, revision=revision)
    except HFValidationError:
        raise ModelNotAvailable(f"model.path={path!r} is neither an existing local directory nor a Hugging Face Hub id "
                                "(org/name)") from None
    except HfHubHTTPError as err:  # online: no such repo or revision, or a private / gated one without a valid token
        raise ModelNotAvailable(f"model.path={path!r} is no local directory here, and the Hub refused it at revision "
                                f"{revision!r} (HTTP {err.response.status_code}): check the id and revision; a private "
                                "or gated model needs HF_TOKEN") from None
    except LocalEntryNotFoundError as err:
        cached = "only partly in" if isinstance(err, IncompleteSnapshotError) else "not in"
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub cannot be reached"
        raise ModelNotAvailable(f"model.path={path!r} is no local directory here, and Hub model {path!r} at revision "
                                f"{revision!r} is {cached} the Hugging Face cache {constants.HF_HUB_CACHE} ({reason}): "
                                f"fetch it on a machine with network with `hf download {path} --revision {revision}`, "
                                "HF_HOME pointing at storage this machine shares, then run with that HF_HOME") from None


def resolved_commit(path: str, local: str) -> str | None:
    """The commit a Hub id resolved to (its snapshot directory's name), None for a local directory: the
    driver pins it, so every actor loads that commit even if the branch moves while the run starts."""
    return None if Path(path).expanduser().exists() else Path(local).name
