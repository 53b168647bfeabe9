"""Fail fast when the Hugging Face hub is needed but cannot be reached."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ebft.errors import UserError


def hub_host() -> str | None:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname


def hub_reachable(host: str | None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's HTTPS port opens within ``timeout`` seconds."""
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise a one-sentence UserError naming ``what`` when the hub is offline by setting or unreachable."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{what} needs the Hugging Face hub, but this profile is offline (offline: true); "
                        f"download it where a hub is reachable or use a local copy.")  # fmt: skip
    host = hub_host()
    if not hub_reachable(host):
        raise UserError(f"{what} needs the Hugging Face hub, which is unreachable from here ({host}); "
                        f"run where it is reachable or use a local copy.")  # fmt: skip


BUILT_IN_MODELS = ("smollm2-gguf", "tiny-random")  # made on this machine, never fetched


def hub_repos(study) -> list[tuple[str, str, str]]:
    """What a study fetches from the hub: (repo type, repo id, what needs it), models first; local folders and the
    built-in models are left out."""
    from pathlib import Path

    repos = []
    for name in study.models:
        source = study.model(name).source
        if source not in BUILT_IN_MODELS and not Path(source).exists():
            repos.append(("model", source, f"model {source!r} (models.{name})"))
    for task, spec in study.tasks.items():
        if spec.source.kind != "hub":
            continue
        for side in ("train", "heldout") if spec.source.heldout is not None else ("train",):
            path = getattr(spec.source, side).path
            if not Path(path).exists() and ("dataset", path) not in {(t, r) for t, r, _ in repos}:
                repos.append(("dataset", path, f"dataset {path!r} (tasks.{task}.source.{side})"))
    return repos


def preflight(study) -> None:
    """Before any job of a real run starts: every hub model and dataset the study needs can be fetched from here.
    Refuses, in one sentence naming the first one that cannot, an offline profile that needs the hub, an unreachable
    hub, a gated repository without an accepted licence and a token, and a repository that does not exist."""
    repos = hub_repos(study)
    if not repos:
        return
    if study.profile.offline:
        raise UserError(f"{repos[0][2]} comes from the Hugging Face hub, but the profile sets offline: true; set "
                        f"offline: false, or replace it with a local folder.")  # fmt: skip
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{repos[0][2]} comes from the Hugging Face hub, but HF_HUB_OFFLINE=1 is set in this shell; "
                        f"unset it and run again.")  # fmt: skip
    require_hub(repos[0][2])  # one reachability probe for all of them
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    for repo_type, repo_id, what in repos:
        try:
            auth_check(repo_id, repo_type=repo_type)
        except GatedRepoError:
            raise UserError(f"{what} is gated: accept its licence at https://huggingface.co/{repo_id} with your "
                            f"account, then set HF_TOKEN (or run 'hf auth login').") from None  # fmt: skip
        except RepositoryNotFoundError:
            raise UserError(f"{what} was not found on the hub, or is private to an account this machine has no token "
                            f"for; check the name, or set HF_TOKEN.") from None  # fmt: skip
        except HfHubHTTPError as e:
            raise UserError(f"{what} could not be checked on the hub ({str(e).splitlines()[0][:120]}); run again "
                            f"when the hub answers.") from None  # fmt: skip
