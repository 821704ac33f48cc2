"""The browser playground: `GET /` serves one page, `GET /p/<id>` the page of one prediction (its `urls.web`),
`/playground/*` their scripts and styles.

The page is a client of the public /v1 API like any other (it builds its form from the version's
`openapi_schema` and sends the token like the official clients do), so nothing here knows about
predictions. Page and assets are public: they hold no data, and the page asks for the token when
/v1 answers 401. Everything is served from the package; the page loads nothing from elsewhere, and
its Content-Security-Policy keeps it that way.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/playground"
# Same origin only. Outputs are same-origin URLs or data: URIs; decoded audio is drawn from blobs.
CSP = (
    "default-src 'self'; media-src 'self' data: blob:; connect-src 'self' data:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter()


def _html(name: str) -> FileResponse:
    return FileResponse(
        STATIC / name, media_type="text/html", headers={"content-security-policy": CSP, "cache-control": "no-cache"}
    )


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return _html("index.html")


@router.get("/p/{pred_id}", include_in_schema=False)
async def prediction(pred_id: str) -> FileResponse:
    """The same page for every id: its script reads the prediction from /v1, with the token, like any client."""
    return _html("prediction.html")


def prediction_page(base_url: str, pred_id: str) -> str:
    """A prediction's `urls.web`."""
    return f"{base_url.rstrip('/')}/p/{pred_id}"


def install(app: FastAPI) -> None:
    """Add the page and its assets to `app`, outside /v1 and its token."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="playground")
