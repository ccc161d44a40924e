"""The one Orthanc REST client of the center.

Explicit timeouts, typed errors, and bounded retries on connection errors and
502/503 only: a 4xx means Orthanc understood and refused, and retrying would
not change its mind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

#: Metadata slot (declared in the generated Orthanc configuration) for the source site.
SOURCE_SITE_METADATA = "RdcSourceSite"
SOURCE_SITE_METADATA_INDEX = 4601
RECEIPT_METADATA = "RdcReceipt"
RECEIPT_METADATA_INDEX = 4602


class OrthancError(Exception):
    """Orthanc answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OrthancUnavailable(OrthancError):
    """Orthanc could not be reached or is overloaded; worth retrying later."""


class OrthancRejected(OrthancError):
    """Orthanc refused the request (4xx); retrying will not help."""


class OrthancNotFound(OrthancRejected):
    pass


class _FileBody:
    """A request body read from a file in chunks, afresh on each iteration: httpx
    iterates it once per attempt, so a retried upload sends the whole file again."""

    def __init__(self, path: Path, chunk_size: int = 1 << 20) -> None:
        self.path = path
        self.chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(self.chunk_size):
                yield chunk


class OrthancClient:
    """Thin typed wrapper over Orthanc's REST API."""

    def __init__(
        self, url: str, username: str, password: str, *, timeout: float = 30.0,
        retries: int = 3, backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(
            base_url=self.url, auth=(username, password),
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            # Orthanc gzips any answer a client says it accepts gzip for, DICOM files
            # included: a 2 MB radiograph then took 129 ms to fetch instead of 2 ms
            # (compressed by Orthanc, decompressed here, over the loopback or the
            # center's LAN). What the web app proxies to browsers was already sent on
            # uncompressed: httpx decoded Orthanc's gzip.
            headers={"Accept-Encoding": "identity"},
        )

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> OrthancClient:
        user, password = settings.orthanc_credentials()
        kw.setdefault("timeout", settings.orthanc_timeout_s)
        return cls(settings.orthanc_url, user, password, **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Plumbing -----------------------------------------------------------
    @staticmethod
    def check_path(path: str) -> None:
        """Refuse a path that an HTTP stack would normalise into another one.

        httpx removes dot segments and Orthanc decodes escapes, so ``a/..%2F..`` or
        ``a/../../system`` would reach another resource than the caller checked; the
        center never needs any of these, so none is sent (raises OrthancRejected)."""
        bare = path.split("?", 1)[0]
        if not bare.startswith("/") or "//" in bare:
            raise OrthancRejected(f"refusing Orthanc path {bare[:80]!r}: not a plain path")
        for bad in ("%", "\\", "#"):
            if bad in bare:
                raise OrthancRejected(f"refusing Orthanc path {bare[:80]!r}: contains {bad!r}")
        if any(seg in (".", "..") for seg in bare.split("/")):
            raise OrthancRejected(f"refusing Orthanc path {bare[:80]!r}: dot segment")

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.check_path(path)
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                err: OrthancError = OrthancUnavailable(f"{method} {path}: {e!r}")
            else:
                if r.status_code < 400:
                    return r
                detail = r.text[:500]
                if r.status_code in (502, 503):
                    err = OrthancUnavailable(f"{method} {path}: HTTP {r.status_code} {detail}",
                                             r.status_code)
                elif r.status_code == 404:
                    raise OrthancNotFound(f"{method} {path}: not found", 404)
                elif r.status_code == 401:
                    raise OrthancRejected(f"{method} {path}: Orthanc refused our credentials", 401)
                elif r.status_code >= 500:
                    raise OrthancError(f"{method} {path}: HTTP {r.status_code} {detail}",
                                       r.status_code)
                else:
                    raise OrthancRejected(f"{method} {path}: HTTP {r.status_code} {detail}",
                                          r.status_code)
            if attempt > self.retries:
                raise err
            time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # API ----------------------------------------------------------------
    def system(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/system")
        return result

    def is_alive(self) -> bool:
        try:
            self._request("GET", "/system")
        except OrthancError:
            return False
        return True

    def upload_instance(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM file; returns Orthanc's answer (ID, Status, ParentStudy...)."""
        result: dict[str, Any] = self._json(
            "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
        )
        if "ID" not in result:
            raise OrthancRejected(f"unexpected answer to upload: {result!r}")
        return result

    def upload_instance_file(self, path: Path) -> dict[str, Any]:
        """Store the DICOM file at ``path``, streamed from disk in 1 MiB chunks so that
        an instance of any size is never held in memory (a retry reads it again)."""
        size = path.stat().st_size
        result: dict[str, Any] = self._json(
            "POST", "/instances", content=_FileBody(path),
            headers={"Content-Type": "application/dicom", "Content-Length": str(size)})
        if "ID" not in result:
            raise OrthancRejected(f"unexpected answer to upload: {result!r}")
        return result

    def set_metadata(self, level: str, orthanc_id: str, name: str, value: str) -> None:
        self._request("PUT", f"/{level}/{orthanc_id}/metadata/{name}", content=value.encode())

    def get_metadata(self, level: str, orthanc_id: str, name: str) -> str:
        return self._request("GET", f"/{level}/{orthanc_id}/metadata/{name}").text

    def get(self, path: str, *, params: dict[str, str] | None = None,
            accept: str | None = None) -> httpx.Response:
        """A GET under Orthanc's API (DICOMweb, previews) with the response as it came,
        for the web app's authenticated proxy.  Errors are typed as for every call."""
        headers = {"Accept": accept} if accept else None
        return self._request("GET", path, params=params, headers=headers)

    def instance_file(self, orthanc_id: str) -> bytes:
        return self._request("GET", f"/instances/{orthanc_id}/file").content

    def stream_instance_file(self, orthanc_id: str, chunk_size: int = 1 << 20,
                             ) -> Iterator[bytes]:
        """The instance's file in chunks, so that a copy of any size (a backup of a
        whole-slide image) never holds it in memory.  Errors are typed as for every call."""
        path = f"/instances/{orthanc_id}/file"
        self.check_path(path)
        try:
            with self._http.stream("GET", path) as r:
                if r.status_code == 404:
                    raise OrthancNotFound(f"GET {path}: not found", 404)
                if r.status_code >= 400:
                    detail = r.read()[:500].decode(errors="replace")
                    raise OrthancError(f"GET {path}: HTTP {r.status_code} {detail}",
                                       r.status_code)
                yield from r.iter_bytes(chunk_size)
        except httpx.TransportError as e:
            raise OrthancUnavailable(f"GET {path}: {e!r}") from e

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("POST", "/tools/lookup", content=uid.encode())
        return result

    def find_instance(self, sop_instance_uid: str) -> str | None:
        for item in self.lookup(sop_instance_uid):
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def find_series(self, series_uid: str) -> str | None:
        for item in self.lookup(series_uid):
            if item.get("Type") == "Series":
                return str(item["ID"])
        return None

    def series_instances(self, series_orthanc_id: str) -> list[str]:
        """Orthanc IDs of a series' instances."""
        result: list[dict[str, Any]] = self._json("GET",
                                                  f"/series/{series_orthanc_id}/instances")
        return [str(item["ID"]) for item in result]

    def study_instances(self, study_orthanc_id: str) -> list[dict[str, Any]]:
        """A study's instances with their main tags (``MainDicomTags``, ``ParentSeries``)."""
        result: list[dict[str, Any]] = self._json("GET",
                                                  f"/studies/{study_orthanc_id}/instances")
        return result

    def study_series(self, study_orthanc_id: str) -> list[dict[str, Any]]:
        """A study's series with their main tags (``MainDicomTags.Modality``...)."""
        result: list[dict[str, Any]] = self._json("GET", f"/studies/{study_orthanc_id}/series")
        return result

    def studies(self) -> list[str]:
        result: list[str] = self._json("GET", "/studies")
        return result

    def study(self, orthanc_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/studies/{orthanc_id}")
        return result

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/statistics")
        return result

    def put_modality(self, name: str, aet: str, host: str, port: int) -> None:
        self._request("PUT", f"/modalities/{name}",
                      json={"AET": aet, "Host": host, "Port": port, "AllowStore": True,
                            "AllowEcho": True})

    def delete_modality(self, name: str) -> None:
        self._request("DELETE", f"/modalities/{name}")

    def delete(self, level: str, orthanc_id: str) -> None:
        self._request("DELETE", f"/{level}/{orthanc_id}")
