"""Versioned flow deployment and the registry the daemon reads flows from.

Layout of the deploy directory (settings.flows.deploy_dir)::

    versions/<hash>/*.yaml     every deployed version, by content hash, never modified
    versions/<hash>/meta.json  when and from where it was deployed
    current -> versions/<hash> a symlink, swapped with os.replace (atomic on POSIX)
    history.jsonl              one line per deploy or rollback

A flow set that fails lint is never written as `current`. `FlowRegistry.current()` returns an
immutable `FlowSet`; each call keeps the one it started with, `reload()` (SIGHUP) swaps it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr_engine.errors import FlowError
from ivr_engine.flow.loader import LoadResult, flow_files, load_paths, raise_first
from ivr_engine.flow.model import FlowSet

log = logging.getLogger(__name__)


class DeployError(FlowError):
    """A deploy or rollback that was refused; `result` holds the lint findings, if any."""

    def __init__(self, message: str, result: LoadResult | None = None):
        self.result = result
        super().__init__(message)


def load_catalogue(directory: str | Path) -> Any | None:
    """The prompt catalogue when the prompts package provides one and the directory has it."""
    import ivr_engine.prompts as prompts

    cls = getattr(prompts, "PromptCatalogue", None)
    path = Path(directory)
    if cls is None or not (path / "catalogue.yaml").is_file():
        return None
    return cls.load(path)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    deployed_at: str
    source: str
    files: tuple[str, ...]
    current: bool


class FlowStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.history = self.root / "history.jsonl"

    # -- reading
    def current_version(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeployError(
                f"{self.current_link}: cannot read the current pointer: {exc}"
            ) from None
        return Path(target).name

    def current_path(self) -> Path | None:
        version = self.current_version()
        return self.versions_dir / version if version else None

    def versions(self) -> list[VersionInfo]:
        current = self.current_version()
        out: list[VersionInfo] = []
        if not self.versions_dir.is_dir():
            return out
        for d in self.versions_dir.iterdir():
            meta_file = d / "meta.json"
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            out.append(
                VersionInfo(
                    d.name,
                    str(meta.get("deployed_at", "")),
                    str(meta.get("source", "")),
                    tuple(meta.get("files", [])),
                    d.name == current,
                )
            )
        out.sort(key=lambda v: v.deployed_at)
        return out

    def _history(self) -> list[dict[str, str]]:
        try:
            lines = self.history.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    # -- writing
    def deploy(
        self, sources: Sequence[str | Path], *, catalogue: Any = None, entry: str | None = None
    ) -> tuple[str, LoadResult, bool]:
        """Validate `sources` and make them current. Returns (version, lint result, changed)."""
        result = load_paths(sources, catalogue=catalogue, entry=entry)
        if result.errors:
            raise DeployError(
                f"not deployed: {len(result.errors)} lint error(s); the current flows stay", result
            )
        flows = raise_first(result)
        version = flows.version
        dest = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.versions_dir))
            try:
                files = flow_files(sources)
                for f in files:
                    shutil.copy2(f, tmp / f.name)
                meta = {
                    "version": version,
                    "deployed_at": _now(),
                    "source": ", ".join(str(s) for s in sources),
                    "files": sorted(f.name for f in files),
                }
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
                os.rename(tmp, dest)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DeployError(f"cannot store version {version}: {exc}") from None
        # the copy must load exactly like the source did (same names, same hash)
        check = load_paths([dest], catalogue=catalogue, entry=entry)
        if check.errors or check.flows is None or check.flows.version != version:
            raise DeployError(
                f"stored version {version} does not load back identically; not switched"
            )
        changed = self.current_version() != version
        if changed:
            self._point_to(version, "deploy")
        return version, result, changed

    def rollback(
        self, version: str | None = None, *, catalogue: Any = None, entry: str | None = None
    ) -> str:
        """Make `version` (a hash or unique prefix) current; default: the one before current."""
        current = self.current_version()
        if version is None:
            previous = [h["version"] for h in self._history() if h.get("version") != current]
            if not previous:
                raise DeployError("nothing to roll back to: no earlier version was current")
            target = previous[-1]
        else:
            matches = [v.version for v in self.versions() if v.version.startswith(version)]
            if not matches:
                raise DeployError(f"no deployed version {version!r}")
            if len(matches) > 1:
                raise DeployError(f"{version!r} matches several versions: {', '.join(matches)}")
            target = matches[0]
        check = load_paths([self.versions_dir / target], catalogue=catalogue, entry=entry)
        if check.errors:
            raise DeployError(f"version {target} no longer passes lint; not switched", check)
        if target != current:
            self._point_to(target, "rollback")
        return target

    def _point_to(self, version: str, action: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".current-{os.getpid()}"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(Path("versions") / version, tmp)
            os.replace(tmp, self.current_link)
            with self.history.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"version": version, "action": action, "at": _now()}) + "\n")
        except OSError as exc:
            raise DeployError(f"cannot switch {self.current_link} to {version}: {exc}") from None
        log.info("flows %s: current is now %s", action, version)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class FlowRegistry:
    """The daemon's view of the flows: `current()` is immutable; `reload()` swaps it."""

    def __init__(
        self,
        source: str | Path,
        *,
        entry: str | None = None,
        catalogue: Any = None,
        fallback: str | Path | None = None,
    ):
        """`source`: a deploy directory (its `current` version) or a flows directory.
        `fallback`: the flows directory to read while nothing has been deployed yet."""
        self.source = Path(source)
        self.fallback = Path(fallback) if fallback is not None else None
        self.entry = entry
        self.catalogue = catalogue
        self._current: FlowSet | None = None

    def _paths(self) -> list[Path]:
        store = FlowStore(self.source)
        path = store.current_path()
        if path is not None:
            return [path]
        return [self.fallback if self.fallback is not None else self.source]

    def current(self) -> FlowSet:
        if self._current is None:
            self.reload()
        loaded = self._current
        if loaded is None:
            raise FlowError("no flows loaded")
        return loaded

    def reload(self) -> FlowSet:
        """Load the current version; on any error keep the old set and raise FlowError."""
        result = load_paths(self._paths(), catalogue=self.catalogue, entry=self.entry)
        try:
            flows = raise_first(result)
        except FlowError:
            log.error(
                "flow reload refused; keeping version %s",
                self._current.version if self._current else "none",
            )
            for d in result.errors[:20]:
                log.error("%s", d.render())
            raise
        if self._current is None or self._current.version != flows.version:
            log.info("flows loaded: version %s (%d flows)", flows.version, len(flows.flows))
        self._current = flows
        return flows

    def install_sighup(self, loop: Any) -> None:
        """Reload on SIGHUP (the loop's signal handler: no work in a signal context)."""

        def on_hup() -> None:
            try:
                self.reload()
            except FlowError:
                pass  # logged in reload(); the old flows stay

        loop.add_signal_handler(signal.SIGHUP, on_hup)
