"""The reader study's web app: Starlette, server-rendered Jinja2 pages, every asset served from this package.

Routes (``TOKEN`` is a reader's private token, ``ADMIN`` the study's admin token)::

    GET  /r/TOKEN                 the next image to judge (or "done"); the page resumes where the reader stopped
    GET  /r/TOKEN/image/ID        the PNG bytes of an image in the reader's study (nothing else: no name, no date)
    POST /r/TOKEN/answer          one answer (a form); stored and committed, then a redirect to the next image
    GET  /admin/ADMIN             progress per reader (counts only: no answer, no key)
    GET  /static/...              the page's own CSS and JavaScript

Bad input gets an error page with a status (400 malformed form, 404 unknown token or image,
409 an answer given twice or for another image than the current one, 413 a form too large,
415 not a form), or a JSON error when the request asks for JSON; the database is left as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .study import ARTEFACTS, CALLS, Answer, AnswerRefused, admin_token, connect, progress_of, reader_of, record_answer, settings

HERE = Path(__file__).parent
MAX_FORM_BYTES = 8192
MAX_NOTE_CHARS = 2000
#: Sent with every response: nothing cached, the token never leaves in a Referer, only this server's own assets run.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'",
}
#: Display size: an image is shown at an integer zoom with square pixels (no resampling), at least this many CSS pixels wide.
DISPLAY_PIXELS = 512


class FormError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def build_app(study_dir: str | Path) -> Starlette:
    """The app for one study directory (its database is opened per request, so several workers would also be safe)."""
    study_dir = Path(study_dir)
    connect(study_dir).close()  # fail now, not on the first request, if it is not a study
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))

    def page(template: str, code: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(**context), status_code=code, headers=SECURITY_HEADERS)

    def error(request: Request, message: str, status: int, resume: str | None = None) -> Response:
        """An error page (or JSON); ``resume``: the reader's own page, offered as the way on (a known reader only)."""
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": message, "status": status}, status_code=status, headers=SECURITY_HEADERS)
        return page("error.html", status, message=message, status=status, resume=resume)

    @contextlib.contextmanager
    def database():
        connection = connect(study_dir)
        try:
            yield connection
        finally:
            connection.close()

    async def reader_page(request: Request) -> Response:
        with database() as db:
            reader = reader_of(db, request.path_params["token"])
            if reader is None:
                return error(request, "this link is not valid: no reader has this token; ask the study's organiser for your link", 404)
            answered, total, current = progress_of(db, reader["id"])
            study = settings(db)
        token = request.path_params["token"]
        if current is None:
            return page("done.html", name=reader["name"], total=total)
        zoom = max(1, -(-DISPLAY_PIXELS // study["resolution"]))
        return page("reader.html", name=reader["name"], token=token, image_id=current, answered=answered, total=total,
                    size=study["resolution"] * zoom, artefacts=ARTEFACTS, max_note=MAX_NOTE_CHARS)

    async def image(request: Request) -> Response:
        with database() as db:
            reader = reader_of(db, request.path_params["token"])
            if reader is None:
                return error(request, "this link is not valid: no reader has this token", 404)
            row = db.execute("SELECT i.png FROM images i JOIN assignments a ON a.image_id = i.id WHERE a.reader_id = ? AND i.id = ?",
                             (reader["id"], request.path_params["image_id"])).fetchone()
        if row is None:
            return error(request, f"image '{request.path_params['image_id']}' is not in this study", 404)
        return Response(bytes(row[0]), media_type="image/png", headers=SECURITY_HEADERS)

    async def answer(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            image_id, given = await parse_answer(request)
        except FormError as exc:
            with database() as db:
                known = reader_of(db, token) is not None
            return error(request, str(exc), exc.status, resume=f"/r/{token}" if known else None)
        with database() as db:
            reader = reader_of(db, token)
            if reader is None:
                return error(request, "this link is not valid: no reader has this token", 404)
            try:
                record_answer(db, reader["id"], image_id, given)
            except AnswerRefused as exc:
                return error(request, str(exc), exc.status, resume=f"/r/{token}")
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"saved": image_id}, headers=SECURITY_HEADERS)
        return RedirectResponse(f"/r/{token}", status_code=303, headers=SECURITY_HEADERS)

    async def admin(request: Request) -> Response:
        with database() as db:
            if request.path_params["token"] != admin_token(db):
                return error(request, "this admin link is not valid", 404)
            readers = []
            for row in db.execute("SELECT id, name FROM readers ORDER BY id").fetchall():
                answered, total, _ = progress_of(db, row["id"])
                readers.append({"name": row["name"], "answered": answered, "total": total})
            study = settings(db)
        return page("admin.html", readers=readers, study=study)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return error(request, "no such page" if status == 404 else f"this address does not take a {request.method} request", status)

    routes = [
        Route("/r/{token}", reader_page, methods=["GET"]),
        Route("/r/{token}/image/{image_id}", image, methods=["GET"]),
        Route("/r/{token}/answer", answer, methods=["POST"]),
        Route("/admin/{token}", admin, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


async def parse_answer(request: Request) -> tuple[str, Answer]:
    """The image id and the answer from a url-encoded form; :class:`FormError` naming the field otherwise."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FormError("send the answer as a form (application/x-www-form-urlencoded)", 415)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise FormError(f"the form is larger than {MAX_FORM_BYTES} bytes; shorten the note", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(f"the form is larger than {MAX_FORM_BYTES} bytes; shorten the note", 413)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=50, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"the form cannot be read ({exc})") from None

    def one(name: str, required: bool = True) -> str:
        values = fields.get(name, [])
        if len(values) > 1:
            raise FormError(f"field '{name}' is given {len(values)} times; give it once")
        if not values or values[0] == "":
            if required:
                raise FormError(f"field '{name}' is missing")
            return ""
        return values[0]

    def score(name: str, required: bool) -> int | None:
        text = one(name, required)
        if not text:
            return None
        if text not in {"1", "2", "3", "4", "5"}:
            raise FormError(f"field '{name}' is '{text[:20]}'; give a whole number from 1 to 5")
        return int(text)

    image_id = one("image_id")
    call = one("call")
    if call not in CALLS:
        raise FormError(f"field 'call' is '{call[:20]}'; give 'real' or 'synthetic'")
    artefacts = fields.get("artefact", [])
    unknown = [a for a in artefacts if a not in ARTEFACTS]
    if unknown or len(set(artefacts)) != len(artefacts):
        raise FormError(f"field 'artefact': '{(unknown or artefacts)[0][:40]}' is not one of {', '.join(ARTEFACTS)} (or is given twice)")
    note = one("note", required=False)
    if len(note) > MAX_NOTE_CHARS:
        raise FormError(f"field 'note' has {len(note)} characters; at most {MAX_NOTE_CHARS}")
    return image_id, Answer(call=call, confidence=score("confidence", True), realism=score("realism", False),
                            artefacts=tuple(a for a in ARTEFACTS if a in artefacts), note=note)


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted (no Server header, access log off: tokens stay out of logs)."""
    import uvicorn

    uvicorn.run(build_app(study_dir), host=host, port=port, server_header=False, access_log=False, log_level="warning")


def links(study_dir: str | Path, host: str, port: int) -> dict[str, str]:
    """The admin link of a study (for ``serve``'s start-up message)."""
    with contextlib.closing(connect(study_dir)) as db:
        return {"admin": f"http://{host}:{port}/admin/{admin_token(db)}"}

