"""Whole-slide tile serving: what a pathologist waits for, against the baselines
measured in the same run on the same machine.

One synthetic slide (``devkit.synthetic_slide``, a pyramidal JPEG TIFF that OpenSlide
opens) is converted twice to DICOM WSI, with 256- and 512-pixel tiles (Orthanc's WSI
plugin serves tiles in the DICOM's own tile size), and stored in a throw-away center's
Orthanc.  One case holds both slides.  Then, with 8 concurrent clients asking for tiles
at random positions and random levels:

(a) OpenSlide ``read_region`` locally on the source TIFF (no network, no DICOM, but
    it decodes every tile to pixels, which a tile server that sends the stored JPEG
    does not: not a ceiling);
(b) Orthanc's WSI plugin directly (``/wsi/tiles/...``, loopback, Orthanc's password);
(c) the web app's authenticated proxy (a real ``rdc web`` process and a signed-in
    pathologist: ``/api/pathology/slides/{id}/tiles/...``).

And what a viewer does, through the app and (for comparison) against Orthanc directly:

- case open: the case (``GET /api/pathology/cases/{id}``), then every slide's pyramid
  and thumbnail, fetched as a browser would (6 connections);
- first field of view: the 1920x1080 screen at the zoom where the whole slide fits:
  every tile of the pyramid level OpenSeadragon (the app's viewer) draws there, over 6
  connections;
- pan step: at full resolution, the tiles a 256-screen-pixel move to the right brings
  in (the new column(s) of a 1920x1080 view), at random places on the slide.

Also reported: the converters' throughput (megapixels per second): the center's own
(``pathology.wsi_convert``, the slide's 512-pixel tiles copied) and OrthancWSIDicomizer
cutting 256-pixel tiles.
Tile counts, latencies and rates are medians of ``--runs`` runs.  Targets (issue 13):
(c) >= 0.8x (b) in tiles/s, tile p50 <= 25 ms through the app, case open < 2 s, field
of view p50 <= 100 ms.

    .venv/bin/python -m benchmarks.pathology [--quick] [--width 40960 --height 30720]
        [--runs 3] [--requests 400] [--clients 8] [--repeat 10]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openslide
import pydicom
import pyotp
from rich.console import Console
from rich.table import Table

from benchmarks.harness import BenchError, median, percentile_ms, verdict, wait_port, write_json
from core.db import get_database
from core.models import PathologyCase, PathologySlide, Study
from core.orthanc_client import OrthancClient
from core.settings import Settings
from core.sites import SiteSpec, add_site
from devkit.center import REPO, Center
from devkit.synthetic_slide import write_synthetic_slide
from pathology.errors import WSIConversionError
from pathology.wsi_convert import convert_slide
from viewer.accounts import add_user
from viewer.auth import SESSION_COOKIE

console = Console()

#: The screen a pathologist reads on, and how far one pan step moves (screen pixels).
SCREEN = (1920, 1080)
PAN_PX = 256
#: A browser's connections per host (Chrome: 6).
BROWSER_CONNECTIONS = 6
#: OpenSeadragon's default: a level is drawn once each of its pixels covers at least
#: half a screen pixel.
MIN_PIXEL_RATIO = 0.5
TILE_SIZES = (256, 512)
#: The synthetic TIFF's own tile size (the one the center's converter keeps).
SOURCE_TILE = 512
SITE = "county-path"
PASSWORD = "a long enough benchmark password 1"  # noqa: S105 (a throw-away center)

#: Asked of Orthanc directly: it gzips every answer a client accepts gzip for (JPEG
#: tiles gain nothing), and the app's proxy does not ask for it either, so the
#: baseline (b) is measured at its best.
NO_GZIP = {"Accept-Encoding": "identity"}

#: Issue 13's targets.
TARGET_PROXY_RATIO = 0.8
TARGET_TILE_P50_MS = 25.0
TARGET_CASE_OPEN_MS = 2000.0
TARGET_FOV_P50_MS = 100.0


# Pyramids and where the tiles are ---------------------------------------------------------
@dataclass(frozen=True)
class Level:
    """One pyramid level; ``level`` 0 is full resolution."""

    level: int
    width: int
    height: int
    downsample: float
    tiles_x: int
    tiles_y: int


@dataclass(frozen=True)
class Pyramid:
    width: int
    height: int
    tile: int
    levels: tuple[Level, ...]


def pyramid_from_orthanc(js: dict[str, Any]) -> Pyramid:
    """Orthanc WSI's ``/wsi/pyramids/{series}`` answer as a :class:`Pyramid` (plugin 1.1
    gives a tile size per level, ``TilesSizes``; all must be one square size here)."""
    width, height = int(js["TotalWidth"]), int(js["TotalHeight"])
    levels = tuple(
        Level(i, int(w), int(h), width / int(w), int(tx), int(ty))
        for i, ((w, h), (tx, ty)) in enumerate(zip(js["Sizes"], js["TilesCount"], strict=True)))
    sizes = {(int(tw), int(th)) for tw, th in js["TilesSizes"]}
    if len(sizes) != 1 or len({n for size in sizes for n in size}) != 1:
        raise BenchError(f"tiles are not of one square size: {sorted(sizes)}")
    return Pyramid(width, height, sizes.pop()[0], levels)


def pyramid_from_app(js: dict[str, Any]) -> Pyramid:
    """The app's ``/api/pathology/slides/{id}/pyramid`` answer as a :class:`Pyramid`."""
    levels = tuple(Level(int(lv["level"]), int(lv["width"]), int(lv["height"]),
                         float(lv["downsample"]), int(lv["tiles_x"]), int(lv["tiles_y"]))
                   for lv in js["levels"])
    return Pyramid(int(js["width"]), int(js["height"]), int(js["tile_width"]), levels)


def pyramid_from_openslide(slide: openslide.OpenSlide, tile: int) -> Pyramid:
    """The source TIFF's levels cut in ``tile``-pixel tiles (what ``read_region`` reads)."""
    width, height = slide.dimensions
    levels = tuple(Level(i, w, h, float(ds), math.ceil(w / tile), math.ceil(h / tile))
                   for i, ((w, h), ds) in enumerate(zip(slide.level_dimensions,
                                                        slide.level_downsamples, strict=True)))
    return Pyramid(width, height, tile, levels)


Tile = tuple[int, int, int]  # level, column, row


def random_tiles(pyr: Pyramid, n: int, rng: random.Random) -> list[Tile]:
    """``n`` tiles at random levels (each level equally likely) and random positions."""
    out = []
    for _ in range(n):
        lv = rng.choice(pyr.levels)
        out.append((lv.level, rng.randrange(lv.tiles_x), rng.randrange(lv.tiles_y)))
    return out


def tiles_in_view(lv: Level, tile: int, x0: float, y0: float, w: float, h: float,
                  ) -> list[Tile]:
    """The tiles of level ``lv`` that a rectangle (level pixels) touches, clipped to it."""
    c0, r0 = max(0, int(x0 // tile)), max(0, int(y0 // tile))
    c1 = min(lv.tiles_x - 1, math.ceil((x0 + w) / tile) - 1)
    r1 = min(lv.tiles_y - 1, math.ceil((y0 + h) / tile) - 1)
    return [(lv.level, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def fit_level(pyr: Pyramid, screen: tuple[int, int] = SCREEN) -> Level:
    """The level OpenSeadragon (the app's viewer) draws when the whole slide fits the
    screen: with its default ``minPixelRatio`` of 0.5, the most detailed level whose
    pixels still cover at least half a screen pixel each."""
    needed = max(pyr.width / screen[0], pyr.height / screen[1])  # slide px per screen px
    coarse_enough = [lv for lv in pyr.levels
                     if lv.downsample >= needed * MIN_PIXEL_RATIO * 0.9999]
    if not coarse_enough:  # a pyramid that stops short of the fitting zoom
        return max(pyr.levels, key=lambda lv: lv.downsample)
    return min(coarse_enough, key=lambda lv: lv.downsample)


def field_of_view(pyr: Pyramid) -> list[Tile]:
    """Every tile of the fitting level (the whole slide is on screen)."""
    lv = fit_level(pyr)
    return tiles_in_view(lv, pyr.tile, 0, 0, lv.width, lv.height)


def pan_steps(pyr: Pyramid, n: int, rng: random.Random,
              screen: tuple[int, int] = SCREEN) -> list[list[Tile]]:
    """``n`` pan steps at full resolution: for a 1920x1080 view at a random place, the
    tiles a move of ``PAN_PX`` to the right brings on screen that were not on it.  A
    move that stays inside the same tile columns (half of them with 512-pixel tiles)
    fetches nothing and is not counted."""
    lv = pyr.levels[0]
    steps: list[list[Tile]] = []
    for _ in range(n * 50):
        if len(steps) == n:
            break
        x = rng.randrange(0, max(1, lv.width - screen[0] - PAN_PX))
        y = rng.randrange(0, max(1, lv.height - screen[1]))
        before = set(tiles_in_view(lv, pyr.tile, x, y, *screen))
        after = tiles_in_view(lv, pyr.tile, x + PAN_PX, y, *screen)
        new = [t for t in after if t not in before]
        if new:
            steps.append(new)
    if not steps:
        raise BenchError(f"no pan step brings in a tile on a {lv.width}x{lv.height} slide")
    return steps


def orthanc_tile_path(series: str) -> Callable[[Tile], str]:
    return lambda t: f"/wsi/tiles/{series}/{t[0]}/{t[1]}/{t[2]}"


def app_tile_path(slide_id: int) -> Callable[[Tile], str]:
    return lambda t: f"/api/pathology/slides/{slide_id}/tiles/{t[0]}/{t[1]}/{t[2]}"


# Tile sources -----------------------------------------------------------------------------
class HttpTiles:
    """Tiles over HTTP with one keep-alive connection per client thread, as a browser
    keeps its connections."""

    def __init__(self, base_url: str, path: Callable[[Tile], str], *,
                 auth: tuple[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.path, self.auth = base_url, path, auth
        self.headers = headers or {}
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        c: httpx.Client | None = getattr(self._local, "client", None)
        if c is None:
            c = httpx.Client(base_url=self.base_url, auth=self.auth, headers=self.headers,
                             timeout=60)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def get(self, path: str) -> bytes:
        r = self.client().get(path)
        if r.status_code != 200:
            raise BenchError(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.content

    def __call__(self, t: Tile) -> int:
        data = self.get(self.path(t))
        if data[:2] != b"\xff\xd8":
            raise BenchError(f"tile {t} is not a JPEG ({data[:16]!r})")
        return len(data)

    def close(self) -> None:
        for c in self._clients:
            c.close()


class OpenSlideTiles:
    """``read_region`` on the source file; one OpenSlide handle (thread-safe) shared by
    the clients, as a tile server keeps its slides open."""

    def __init__(self, path: Path, tile: int) -> None:
        self.slide = openslide.OpenSlide(str(path))
        self.pyr = pyramid_from_openslide(self.slide, tile)

    def __call__(self, t: Tile) -> int:
        level, col, row = t
        lv = self.pyr.levels[level]
        x0 = int(col * self.pyr.tile * lv.downsample)
        y0 = int(row * self.pyr.tile * lv.downsample)
        w = min(self.pyr.tile, lv.width - col * self.pyr.tile)
        h = min(self.pyr.tile, lv.height - row * self.pyr.tile)
        img = self.slide.read_region((x0, y0), level, (w, h))
        return img.width * img.height

    def close(self) -> None:
        self.slide.close()


# Measurements -----------------------------------------------------------------------------
@dataclass
class Throughput:
    tiles_per_s: float
    p50_ms: float
    p95_ms: float
    n: int


class Pool:
    """``n`` long-lived client threads.  Each keeps its own keep-alive connection to each
    server (``HttpTiles`` holds one per thread), as a browser keeps its 6 connections
    open: no measured request pays for a TCP connection."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.executor = ThreadPoolExecutor(n)

    def warm(self, fn: Callable[[], object]) -> None:
        """``fn`` once on every thread (the barrier keeps a thread from taking a second
        call), so that every connection is open before anything is timed."""
        barrier = threading.Barrier(self.n)

        def one(_: int) -> None:
            try:
                fn()
            finally:  # a failed call still lets the others through; map re-raises it
                barrier.wait(timeout=120)

        list(self.executor.map(one, range(self.n)))

    def close(self) -> None:
        self.executor.shutdown()


def concurrent_tiles(fetch: Callable[[Tile], int], tiles: Sequence[Tile],
                     pool: Pool) -> Throughput:
    """``pool.n`` clients, each asking for its share of ``tiles`` one after the other."""
    shares = [list(tiles[i::pool.n]) for i in range(pool.n)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[Tile]) -> None:
        mine = []
        for t in share:
            t0 = time.perf_counter()
            fetch(t)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    pool.warm(lambda: fetch(tiles[0]))
    t0 = time.perf_counter()
    list(pool.executor.map(client, shares))
    wall = time.perf_counter() - t0
    return Throughput(round(len(tiles) / wall, 1), round(percentile_ms(latencies, 50), 2),
                      round(percentile_ms(latencies, 95), 2), len(tiles))


def batch_ms(fetch: Callable[[Tile], int], tiles: Sequence[Tile], browser: Pool) -> float:
    """Milliseconds from the first request to the last byte of a set of tiles fetched over
    the browser's connections (what a viewer waits for to draw a screen)."""
    t0 = time.perf_counter()
    list(browser.executor.map(fetch, tiles))
    return (time.perf_counter() - t0) * 1000


def median_throughput(runs: list[Throughput]) -> dict[str, float]:
    return {"tiles_per_s": round(median([r.tiles_per_s for r in runs]), 1),
            "p50_ms": round(median([r.p50_ms for r in runs]), 2),
            "p95_ms": round(median([r.p95_ms for r in runs]), 2),
            "runs": len(runs), "requests_per_run": runs[0].n}


# The center -------------------------------------------------------------------------------
@dataclass
class Converted:
    tile: int
    files: list[Path]
    seconds: float
    converter: str
    study_uid: str = ""
    series_uid: str = ""
    orthanc_series: str = ""
    slide_id: int = 0
    megapixels_per_s: float = 0.0


def dicomize(tiff: Path, out_dir: Path, tile: int, megapixels: float) -> Converted:
    """The source TIFF as DICOM WSI with ``tile``-pixel tiles, timed.

    The source's own tile size goes through the center's converter
    (``pathology.wsi_convert.convert_slide``, what ``rdc pathology import`` runs: the
    tiles are copied, never decoded).  Another size asks ``OrthancWSIDicomizer`` (the
    program that converter drives) to cut the tiles anew, which the center's converter
    never does for a tiled TIFF.
    """
    if tile == SOURCE_TILE:
        try:
            done = convert_slide(tiff, out_dir)
        except WSIConversionError as e:
            raise BenchError(str(e)) from e
        return Converted(tile, done.files, done.seconds, "pathology.wsi_convert",
                         megapixels_per_s=round(megapixels / done.seconds, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("OrthancWSIDicomizer")
    if exe is None:
        raise BenchError("OrthancWSIDicomizer is missing (apt-get install orthanc-wsi)")
    cmd = [exe, "--folder", str(out_dir), "--tile-width", str(tile), "--tile-height",
           str(tile), "--compression", "jpeg", "--jpeg-quality", "85", "--max-size", "0",
           "--threads", str(os.cpu_count() or 1), str(tiff)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise BenchError(f"OrthancWSIDicomizer failed ({run.returncode}):\n"
                         f"{run.stderr[-1500:]}")
    files = sorted(out_dir.glob("*.dcm"))
    if not files:
        raise BenchError(f"OrthancWSIDicomizer wrote nothing into {out_dir}")
    return Converted(tile, files, seconds, f"OrthancWSIDicomizer --tile-width {tile}",
                     megapixels_per_s=round(megapixels / seconds, 1))


def store(client: OrthancClient, conv: Converted) -> None:
    """Upload one conversion; note its study, series and Orthanc series ID."""
    answer: dict[str, Any] = {}
    for path in conv.files:
        answer = client.upload_instance_file(path)
    ds = pydicom.dcmread(conv.files[0], stop_before_pixels=True)
    conv.study_uid, conv.series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    conv.orthanc_series = str(answer["ParentSeries"])


def make_case(settings: Settings, convs: list[Converted], pyramids: dict[int, Pyramid],
              mpp: float) -> int:
    """The case and slide rows the intake job would write (rows written directly: the
    benchmark measures serving, not intake, and must not wait for a worker)."""
    db = get_database(settings.database_url)
    now = datetime.now(UTC)
    with db.session() as s:
        add_site(s, SiteSpec(id=SITE, name="County pathology lab", ae_title="COUNTY_PATH",
                             host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                 actor="bench")
        case = PathologyCase(site_id=SITE, accession_number="BENCH-1", patient_id="P-BENCH",
                             patient_name="BENCH^SLIDE", organ="colon", urgency="routine",
                             state="qc_passed", received_at=now, updated_at=now)
        s.add(case)
        s.flush()
        for n, conv in enumerate(convs, start=1):
            study = Study(site_id=SITE, study_uid=conv.study_uid, patient_id="P-BENCH",
                          accession_number="BENCH-1", modalities=["SM"], state="complete",
                          stored_instances=len(conv.files), completed_at=now)
            s.add(study)
            s.flush()
            if case.primary_study_id is None:
                case.primary_study_id = study.id
            pyr = pyramids[conv.tile]
            slide = PathologySlide(
                case_id=case.id, study_id=study.id, series_uid=conv.series_uid,
                orthanc_series_id=conv.orthanc_series, source="import", part="A",
                block=f"A{n}", stain="H&E",
                label=f"{conv.tile}-pixel tiles", width=pyr.width, height=pyr.height,
                levels=len(pyr.levels), mpp=mpp, qc_grade="pass", qc_at=now)
            s.add(slide)
            s.flush()
            conv.slide_id = slide.id
        return case.id


def sign_in(settings: Settings, base_url: str) -> dict[str, str]:
    """A pathologist (all sites) signs in with password and TOTP; the headers a browser
    then sends (session cookie, CSRF token)."""
    with get_database(settings.database_url).session() as s:
        _, uri = add_user(s, settings, username="bench-pathologist",
                          display_name="Dr Bench", password=PASSWORD, roles=["pathologist"],
                          all_sites=True, actor="bench")
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    r = httpx.post(f"{base_url}/api/auth/login", timeout=30, json={
        "username": "bench-pathologist", "password": PASSWORD, "totp": totp.now()})
    if r.status_code != 200:
        raise BenchError(f"sign-in failed: HTTP {r.status_code} {r.text[:300]}")
    token = r.cookies.get(SESSION_COOKIE)
    if token is None:
        raise BenchError("sign-in set no session cookie")
    # Sent by hand: the cookie is Secure-flagged and this is loopback HTTP.
    return {"Cookie": f"{SESSION_COOKIE}={token}", "X-CSRF-Token": r.json()["csrf_token"]}


# Viewer scenarios -------------------------------------------------------------------------
def open_case_app(app: HttpTiles, case_id: int, browser: Pool) -> float:
    """Case JSON, then every slide's pyramid and thumbnail over the browser's connections."""
    t0 = time.perf_counter()
    detail = httpx.Response(200, content=app.get(f"/api/pathology/cases/{case_id}")).json()
    paths = [p for sl in detail["slides"] for p in (f"/api/pathology/slides/{sl['id']}/pyramid",
                                                    f"/api/pathology/slides/{sl['id']}/thumbnail")]
    if not detail["slides"]:
        raise BenchError(f"case {case_id} has no slides in the app's answer")
    list(browser.executor.map(app.get, paths))
    return (time.perf_counter() - t0) * 1000


def open_case_direct(direct: HttpTiles, convs: list[Converted],
                     pyramids: dict[int, Pyramid], browser: Pool) -> float:
    """The same from Orthanc: each series' pyramid and its lowest level's first tile."""
    t0 = time.perf_counter()

    def one(conv: Converted) -> None:
        direct.get(f"/wsi/pyramids/{conv.orthanc_series}")
        last = pyramids[conv.tile].levels[-1].level
        direct.get(f"/wsi/tiles/{conv.orthanc_series}/{last}/0/0")

    list(browser.executor.map(one, convs))
    return (time.perf_counter() - t0) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"first_ms": round(values[0], 1), "p50_ms": round(median(values), 1),
            "p95_ms": round(percentile_ms([v / 1000 for v in values], 95), 1),
            "n": len(values)}


# Main -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    # mkdtemp, not TemporaryDirectory: that one is removed at exit even with --keep.
    home = Path(tempfile.mkdtemp(prefix="rdc-bench-pathology-"))
    center = Center(home=home, db_url="", broker_url="", taken_ports=set(),
                    quick_timers=False)
    settings = center.settings
    web: subprocess.Popen[bytes] | None = None
    sources: list[HttpTiles | OpenSlideTiles] = []
    clients, browser = Pool(args.clients), Pool(BROWSER_CONNECTIONS)
    try:
        center.start_orthanc()
        megapixels = args.width * args.height / 1e6
        console.print(f"generating a {args.width}x{args.height} synthetic slide "
                      f"({megapixels:.0f} megapixels)...")
        tiff = home / "slide.tiff"
        t0 = time.perf_counter()
        truth = write_synthetic_slide(tiff, width=args.width, height=args.height, seed=7,
                                      tile=SOURCE_TILE)
        generate_s = time.perf_counter() - t0
        console.print(f"generated in {generate_s:.0f} s ({megapixels / generate_s:.0f} "
                      f"megapixels/s, {tiff.stat().st_size / 1e6:.0f} MB)")
        mpp = float(getattr(truth, "mpp", 0.25))
        convs = []
        for tile in TILE_SIZES:
            conv = dicomize(tiff, home / f"dicom-{tile}", tile, megapixels)
            console.print(f"{conv.converter}: {tile}-pixel tiles in {conv.seconds:.1f} s "
                          f"({conv.megapixels_per_s} megapixels/s, {len(conv.files)} files)")
            convs.append(conv)
        with OrthancClient.from_settings(settings) as client:
            for conv in convs:
                store(client, conv)
        user, password = settings.orthanc_credentials()
        direct = HttpTiles(settings.orthanc_url, lambda t: "", auth=(user, password),
                           headers=NO_GZIP)
        sources.append(direct)
        pyramids = {conv.tile: pyramid_from_orthanc(httpx.Response(200, content=direct.get(
            f"/wsi/pyramids/{conv.orthanc_series}")).json()) for conv in convs}
        for conv in convs:
            if pyramids[conv.tile].tile != conv.tile:
                raise BenchError(f"Orthanc serves {pyramids[conv.tile].tile}-pixel tiles "
                                 f"for the {conv.tile}-pixel conversion")
        case_id = make_case(settings, convs, pyramids, mpp)

        web = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=center.env, cwd=REPO,
                               stdout=open(home / "web.log", "wb"), stderr=subprocess.STDOUT)
        wait_port(settings.web_port, 90, web, "the web app", home / "web.log")
        base = f"http://127.0.0.1:{settings.web_port}"
        headers = sign_in(settings, base)
        results: dict[str, Any] = {"tiles": {}, "viewer": {}}

        # Case open first, while the app's caches (pyramids, thumbnails) are cold, as for
        # a case nobody has opened yet; the browser has the worklist loaded already.
        api = HttpTiles(base, lambda t: "", headers=headers)
        sources.append(api)
        # Each web worker process sets its database up on its first request, and two
        # threads doing that at once fail (alembic, core.db.get_database): one request
        # at a time, each on a new connection, until every worker has answered.
        for _ in range(4 * BROWSER_CONNECTIONS):
            httpx.get(f"{base}/api/pathology/cases", headers=headers, timeout=60)
        browser.warm(lambda: api.get("/api/pathology/cases"))
        opened_app = [open_case_app(api, case_id, browser) for _ in range(args.repeat)]
        browser.warm(lambda: direct.get(f"/wsi/pyramids/{convs[0].orthanc_series}"))
        opened_direct = [open_case_direct(direct, convs, pyramids, browser)
                         for _ in range(args.repeat)]
        results["case_open"] = {"(b) Orthanc WSI direct": summary(opened_direct),
                                "(c) web app proxy": summary(opened_app),
                                "slides": len(convs)}

        rng = random.Random(args.seed)
        for conv in convs:
            tile = conv.tile
            pyr = pyramids[tile]
            series, slide_id = conv.orthanc_series, conv.slide_id
            orthanc_src = HttpTiles(settings.orthanc_url, orthanc_tile_path(series),
                                    auth=(user, password), headers=NO_GZIP)
            app_src = HttpTiles(base, app_tile_path(slide_id), headers=headers)
            app_pyr = pyramid_from_app(httpx.Response(200, content=app_src.get(
                f"/api/pathology/slides/{slide_id}/pyramid")).json())
            if app_pyr.tile != tile or len(app_pyr.levels) != len(pyr.levels):
                raise BenchError(f"the app's pyramid {app_pyr} differs from Orthanc's {pyr}")
            local = OpenSlideTiles(tiff, tile)
            sources += [orthanc_src, app_src, local]
            named: list[tuple[str, Callable[[Tile], int], Pyramid]] = [
                ("(a) OpenSlide read_region", local, local.pyr),
                ("(b) Orthanc WSI direct", orthanc_src, pyr),
                ("(c) web app proxy", app_src, pyr)]
            runs: dict[str, list[Throughput]] = {name: [] for name, _, _ in named}
            for r in range(args.runs):
                for name, fetch, p in named:
                    tiles = random_tiles(p, args.requests, random.Random(args.seed + r))
                    runs[name].append(concurrent_tiles(fetch, tiles, clients))
                console.print(f"  {tile}-pixel tiles, run {r + 1}/{args.runs}: " + ", ".join(
                    f"{n.split()[0]} {runs[n][-1].tiles_per_s}/s" for n in runs))
            results["tiles"][str(tile)] = {n: median_throughput(v) for n, v in runs.items()}

            fov = field_of_view(pyr)
            pans = pan_steps(pyr, args.repeat, rng)
            view: dict[str, Any] = {"fov_tiles": len(fov),
                                    "fov_level": fit_level(pyr).level,
                                    "pan_tiles_mean": round(sum(map(len, pans))
                                                            / max(1, len(pans)), 1)}
            for name, fetch in (("(b) Orthanc WSI direct", orthanc_src),
                                ("(c) web app proxy", app_src)):
                browser.warm(partial(fetch, fov[0]))
                fov_ms = [batch_ms(fetch, fov, browser) for _ in range(args.repeat)]
                pan_ms = [batch_ms(fetch, step, browser) for step in pans]
                view[name] = {"field_of_view": summary(fov_ms), "pan_step": summary(pan_ms)}
            results["viewer"][str(tile)] = view

        results["dicomizer"] = {str(c.tile): {"converter": c.converter,
                                              "seconds": round(c.seconds, 2),
                                              "megapixels_per_s": c.megapixels_per_s,
                                              "files": len(c.files)} for c in convs}
        results["synthetic_slide"] = {"width": args.width, "height": args.height,
                                      "megapixels": round(megapixels, 1),
                                      "generate_s": round(generate_s, 1),
                                      "tiff_mb": round(tiff.stat().st_size / 1e6, 1)}
        results["pyramids"] = {str(t): [asdict(lv) for lv in p.levels]
                               for t, p in pyramids.items()}
        return results
    finally:
        clients.close()
        browser.close()
        for src in sources:
            src.close()
        if web is not None:
            web.terminate()
            try:
                web.wait(30)
            except subprocess.TimeoutExpired:
                web.kill()
        center.stop_orthanc()
        if args.keep:
            console.print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


@dataclass
class Verdicts:
    rows: list[tuple[str, str, str, bool | None]] = field(default_factory=list)

    def add(self, what: str, measured: str, target: str, passed: bool | None) -> None:
        self.rows.append((what, measured, target, passed))


def judge(results: dict[str, Any]) -> Verdicts:
    v = Verdicts()
    for tile, by in results["tiles"].items():
        a, b, c = (by["(a) OpenSlide read_region"], by["(b) Orthanc WSI direct"],
                   by["(c) web app proxy"])
        ratio = c["tiles_per_s"] / b["tiles_per_s"]
        v.add(f"{tile} px: (c)/(b) tiles/s", f"{ratio:.2f}x", f">= {TARGET_PROXY_RATIO}x",
              ratio >= TARGET_PROXY_RATIO)
        v.add(f"{tile} px: (b)/(a) tiles/s", f"{b['tiles_per_s'] / a['tiles_per_s']:.2f}x",
              "-", None)
        v.add(f"{tile} px: tile p50 through the app", f"{c['p50_ms']:.1f} ms",
              f"<= {TARGET_TILE_P50_MS:.0f} ms", c["p50_ms"] <= TARGET_TILE_P50_MS)
    for tile, view in results["viewer"].items():
        fov = view["(c) web app proxy"]["field_of_view"]
        v.add(f"{tile} px: field of view p50 through the app ({view['fov_tiles']} tiles)",
              f"{fov['p50_ms']:.0f} ms", f"<= {TARGET_FOV_P50_MS:.0f} ms",
              fov["p50_ms"] <= TARGET_FOV_P50_MS)
        pan = view["(c) web app proxy"]["pan_step"]
        v.add(f"{tile} px: pan step p50 through the app", f"{pan['p50_ms']:.0f} ms", "-",
              None)
    opened = results["case_open"]["(c) web app proxy"]
    slides = results["case_open"]["slides"]
    # The first open finds the app's caches cold (pyramids, thumbnails): what a
    # pathologist meets opening a new case; the later ones what reopening costs.
    v.add(f"case open, first (cold), {slides} slides", f"{opened['first_ms']:.0f} ms",
          f"< {TARGET_CASE_OPEN_MS:.0f} ms", opened["first_ms"] < TARGET_CASE_OPEN_MS)
    v.add(f"case open p50, {slides} slides", f"{opened['p50_ms']:.0f} ms",
          f"< {TARGET_CASE_OPEN_MS:.0f} ms", opened["p50_ms"] < TARGET_CASE_OPEN_MS)
    for tile, d in results["dicomizer"].items():
        v.add(f"conversion to {tile}-pixel tiles ({d['converter']})",
              f"{d['megapixels_per_s']} MP/s", "reported", None)
    return v


def report(results: dict[str, Any], verdicts: Verdicts, clients: int) -> None:
    for tile, by in results["tiles"].items():
        base = by["(b) Orthanc WSI direct"]["tiles_per_s"]
        t = Table(f"{tile}-pixel tiles, {clients} clients", "tiles/s", "p50 ms", "p95 ms",
                  "tiles/s vs (b)", title=f"random tiles, random levels "
                  f"(median of {by['(b) Orthanc WSI direct']['runs']} runs)")
        for name, r in by.items():
            t.add_row(name, f"{r['tiles_per_s']:.0f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['tiles_per_s'] / base:.2f}x")
        console.print(t)
    t = Table("viewer step", "path", "first ms", "p50 ms", "p95 ms", "p50 vs (b)")
    for tile, view in results["viewer"].items():
        for step, label in (("field_of_view", f"{tile} px field of view "
                                              f"({view['fov_tiles']} tiles)"),
                            ("pan_step", f"{tile} px pan step "
                                         f"(~{view['pan_tiles_mean']} tiles)")):
            b = view["(b) Orthanc WSI direct"][step]["p50_ms"]
            for name in ("(b) Orthanc WSI direct", "(c) web app proxy"):
                s = view[name][step]
                t.add_row(label, name, f"{s['first_ms']:.0f}", f"{s['p50_ms']:.0f}",
                          f"{s['p95_ms']:.0f}", f"{s['p50_ms'] / b:.2f}x")
    b = results["case_open"]["(b) Orthanc WSI direct"]["p50_ms"]
    for name in ("(b) Orthanc WSI direct", "(c) web app proxy"):
        s = results["case_open"][name]
        t.add_row("case open", name, f"{s['first_ms']:.0f}", f"{s['p50_ms']:.0f}",
                  f"{s['p95_ms']:.0f}", f"{s['p50_ms'] / b:.2f}x")
    console.print(t)
    t = Table("target", "measured", "target", "verdict")
    for what, measured, target, passed in verdicts.rows:
        t.add_row(what, measured, target, verdict(passed))
    console.print(t)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--width", type=int, default=40960)
    ap.add_argument("--height", type=int, default=30720)
    ap.add_argument("--runs", type=int, default=3, help="runs of the tile test (medians)")
    ap.add_argument("--requests", type=int, default=400, help="tiles per run and source")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=10,
                    help="fields of view, pan steps and case opens timed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="a 16384x12288 slide, 200 requests, 5 repeats (a few minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the center's folder")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.width, args.height = min(args.width, 16384), min(args.height, 12288)
        args.requests, args.repeat = min(args.requests, 200), min(args.repeat, 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        results = run(args)
    except BenchError as e:
        console.print(f"[red]benchmark failed[/red]: {e}")
        return 1
    verdicts = judge(results)
    report(results, verdicts, args.clients)
    write_json(args.out / "pathology.json", {
        "created": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(),
        "clients": args.clients, "runs": args.runs, "requests": args.requests,
        "repeat": args.repeat, "results": results,
        "verdicts": [{"what": w, "measured": m, "target": t, "passed": p}
                     for w, m, t, p in verdicts.rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
