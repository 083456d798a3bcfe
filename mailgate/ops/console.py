"""The web console: one process of the supervisor's (``mailgate worker admin``), Flask pages
rendered on the server, plus the Prometheus ``/metrics`` endpoint.

It acts on the spool exactly as the CLI does (``queueops``, ``quarantine``, ``archive``): a
button is a rename, never a message to another process.

Security invariants:
- Every page but ``/login``, ``/static`` and ``/metrics`` needs a logged-in session; the session
  cookie is HttpOnly and SameSite=Strict, signed with a key kept in ``run/`` (0600).
- Every POST carries the session's CSRF token or is refused with 400 before anything happens.
- A queue ID, status, state or archive kind from the browser is checked against its pattern
  or list (``spool.check_id``, ``STATES``...) before it becomes part of a path.
- Message content (quarantine, archive) is only ever sent as a download:
  ``Content-Disposition: attachment``, ``text/plain``, ``nosniff``; pages show only decoded,
  escaped headers. No page has inline script; the CSP forbids it.
- After ``MAX_FAILURES`` wrong passwords from one address within ``FAILURE_WINDOW`` seconds,
  that address gets 429 until the window has passed, without the password being checked.
"""

from __future__ import annotations

import collections
import hmac
import re
import secrets
import signal
import threading
import time
from pathlib import Path

from flask import Flask, Response, abort, redirect, render_template, request, session, url_for
from werkzeug.serving import WSGIRequestHandler, make_server

from mailgate import config as configmod
from mailgate.config import passwords
from mailgate.ops import logins, nodes, pages, report, track
from mailgate.runtime import log as logmod
from mailgate.runtime import stats
from mailgate.runtime.cluster import Cluster
from mailgate.spool import ARCHIVES, STATES, Spool, archive, journal, quarantine, queueops

CONSOLE_DATA = configmod.data_path("console")


def create_app(config: configmod.Config, serve_metrics: bool = True) -> Flask:
    app = Flask(
        "mailgate.ops.console",
        template_folder=str(CONSOLE_DATA / "templates"),
        static_folder=str(CONSOLE_DATA / "static"),
    )
    spool = Spool(config.spool_path)
    cluster = Cluster(config)  # Redis is not reloadable: one link for the console's life
    app.secret_key = logins.session_key(spool)
    app.config.update(
        SESSION_COOKIE_NAME="mailgate_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookie,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.extensions["mailgate"] = {"config": config}
    throttle = logins.Throttle()
    sessions = logins.Sessions(spool.run_path("console-sessions"))
    log = logmod.get()

    def current() -> configmod.Config:
        return app.extensions["mailgate"]["config"]

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    app.jinja_env.globals.update(
        csrf_token=csrf_token, fmt_time=pages.fmt_time, this_node=cluster.node
    )

    @app.before_request
    def guard():
        if request.endpoint in ("static", "metrics"):
            return None
        if request.method == "POST":
            sent = request.form.get("csrf", "")
            if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
                log.warning("console_csrf_refused", client=request.remote_addr, path=request.path)
                abort(400, "missing or wrong CSRF token")
        if request.endpoint == "login":
            return None
        fingerprint = passwords.fingerprint(passwords.stored(current()))
        if not sessions.valid(session.get("sid", ""), fingerprint):
            return redirect(url_for("login"))
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'none'"
        )
        if request.endpoint not in ("static",):
            response.headers["Cache-Control"] = "no-store"
        return response

    # -------------------------------------------------------------- login

    def client() -> str:
        """The client's address; through a TrustedProxies proxy, the one it forwarded."""
        ip = request.remote_addr or ""
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded and configmod.in_networks(ip, current().trusted_proxies):
            last = forwarded.rsplit(",", 1)[-1].strip()
            return last if configmod.client_address(last) is not None else ip
        return ip

    @app.route("/login", methods=["GET", "POST"])
    def login():
        ip = client()
        error = None
        if request.method == "POST":
            if throttle.blocked(ip):
                log.warning("console_login_throttled", client=ip)
                return render_template("login.html", error="Too many failed logins; wait."), 429
            stored = passwords.stored(current())
            if passwords.verify(request.form.get("password", ""), stored):
                throttle.succeeded(ip)
                session.clear()
                sid = sessions.open(passwords.fingerprint(stored))
                session.update(user="admin", sid=sid, csrf=secrets.token_urlsafe(32))
                log.info("console_login", client=ip)
                return redirect(url_for("dashboard"))
            throttle.failed(ip)
            log.warning("console_login_failed", client=ip)
            error = "Wrong password."
        unset = not passwords.stored(current())
        return render_template("login.html", error=error, unset=unset), 401 if error else 200

    @app.post("/logout")
    def logout():
        sessions.close(session.get("sid", ""))
        session.clear()
        return redirect(url_for("login"))

    # -------------------------------------------------------------- dashboard

    @app.get("/")
    def dashboard():
        now = time.time()
        midnight = report.parse_since(time.strftime("%Y-%m-%d", time.localtime(now)))
        events = list(journal.read(spool, now - 86400, now))  # covers today as well
        today = report.build(spool, midnight, now, top=5, events=events)
        last24 = report.build(spool, now - 86400, now, top=0, events=events)["hourly"][-24:]
        peak = max([h["received"] for h in last24] or [0]) or 1
        quarantined = collections.Counter(status for status, _ in spool.quarantined())
        return render_template(
            "dashboard.html",
            processes=pages.processes(spool),
            queues=stats.queue_depths(spool),
            quarantined=dict(sorted(quarantined.items())),
            today=today,
            chart=last24,
            peak=peak,
            totals=stats.Snapshot(spool).as_json(),
            cluster=nodes.overview(cluster),
            metric_names={name: text for name, (_kind, text, _label) in stats.METRICS.items()},
        )

    # -------------------------------------------------------------- queue

    @app.get("/queue")
    def queue_list():
        state = request.args.get("state", "")
        text = request.args.get("q", "").strip().lower()
        states = [state] if state in STATES[1:] else list(STATES[1:])
        rows = [queueops.summary(e) for s in states for e in spool.entries(s)]
        if text:
            rows = [r for r in rows if pages.matches(text, r)]
        return render_template(
            "queue.html", rows=rows[:1000], total=len(rows), states=STATES[1:], state=state, q=text
        )

    @app.get("/queue/<queue_id>")
    def queue_show(queue_id: str):
        entry = pages.find(spool, pages.checked_id(queue_id))
        try:
            envelope = entry.read_envelope()
            head = pages.decoded_header(entry.read_message())
        except (OSError, ValueError):
            envelope, head = {}, []
        return render_template(
            "message.html", entry=entry, envelope=envelope, head=head, reason=entry.read_reason()
        )

    @app.post("/queue/<queue_id>/<action>")
    def queue_act(queue_id: str, action: str):
        if action not in queueops.ACTIONS:
            abort(404)
        entry = pages.find(spool, pages.checked_id(queue_id))
        try:
            done = queueops.act(spool, action, entry)
        except queueops.Refused as exc:
            return render_template("done.html", message=str(exc), back=url_for("queue_list")), 409
        log.info("console_queue", qid=entry.id, action=action, client=request.remote_addr)
        return render_template("done.html", message=done, back=url_for("queue_list"))

    # -------------------------------------------------------------- quarantine

    @app.get("/quarantine")
    def quarantine_list():
        status = request.args.get("status", "")
        text = request.args.get("q", "").strip().lower()
        wanted = pages.checked_status(status) if status else None
        statuses = sorted({s for s, _ in spool.quarantined()})
        rows, note = nodes.quarantined_everywhere(current(), spool, cluster, wanted)
        rows = [row for row in rows if not text or pages.matches(text, row)]
        rows.sort(key=lambda r: r["quarantined_at"], reverse=True)
        return render_template(
            "quarantine.html",
            rows=rows[:1000],
            total=len(rows),
            statuses=statuses,
            status=status,
            q=text,
            note=note,
        )

    @app.get("/quarantine/<status>/<queue_id>")
    def quarantine_show(status: str, queue_id: str):
        entry = pages.quarantined_page(spool, status, queue_id)
        envelope = entry.read_envelope()
        return render_template(
            "quarantined.html",
            status=status,
            row=quarantine.summary(status, entry),
            verdict=envelope.get("verdict") or {},
            head=pages.decoded_header(quarantine.read_header(entry)),
        )

    @app.get("/quarantine/<status>/<queue_id>/download")
    def quarantine_download(status: str, queue_id: str):
        entry = pages.quarantined_page(spool, status, queue_id)
        return pages.download(entry.read_message(), f"{entry.id}.eml")

    @app.post("/quarantine")
    def quarantine_bulk():
        action = request.form.get("action", "")
        if action not in ("release", "delete"):
            abort(400, "action must be release or delete")
        done = []
        for item in request.form.getlist("item"):
            node, _, item = item.rpartition(":")
            status, _, queue_id = item.partition("/")
            status, queue_id = pages.checked_status(status), pages.checked_id(queue_id)
            if node and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", node):
                abort(400, "bad node name")
            if node and node != cluster.node:
                answer = nodes.request(cluster, node, action, status, queue_id)
                done.append(f"node {node}: {answer}")
                continue
            entry = pages.quarantined(spool, status, queue_id)
            if entry is None:
                done.append(f"{queue_id}: no longer in quarantine")
                continue
            if action == "release":
                new_id = quarantine.release(spool, status, entry)
                done.append(f"{queue_id}: released as {new_id}")
            else:
                spool.remove(entry)
                done.append(f"{queue_id}: deleted")
            log.info("console_quarantine", qid=queue_id, action=action, client=request.remote_addr)
        message = "; ".join(done) or "nothing selected"
        return render_template("done.html", message=message, back=url_for("quarantine_list"))

    # -------------------------------------------------------------- archives

    @app.get("/archive")
    def archive_search():
        args = {k: request.args.get(k, "").strip() for k in pages.ARCHIVE_FILTERS}
        kind = request.args.get("kind", "")
        for day in (args["since"], args["until"]):
            if day and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
                abort(400, "a day is YYYY-MM-DD")
        if args["queue_id"]:
            pages.checked_id(args["queue_id"])
        rows, note = nodes.archived_everywhere(
            current(),
            spool,
            cluster,
            kind if kind in ARCHIVES else None,
            **{k: v or None for k, v in args.items()},
        )
        return render_template(
            "archive.html",
            rows=rows[-1000:],
            total=len(rows),
            args=args,
            kind=kind,
            kinds=ARCHIVES,
            note=note,
        )

    @app.get("/archive/<kind>/<queue_id>/download")
    def archive_download(kind: str, queue_id: str):
        if kind not in ARCHIVES:
            abort(404)
        found = archive.find(spool, pages.checked_id(queue_id), kind)
        if found is None:
            abort(404)
        return pages.download(found[2].read_message(), f"{queue_id}.eml")

    @app.get("/track")
    def track_page():
        args = {k: request.args.get(k, "").strip() for k in ("sender", "recipient", "id")}
        since_text = request.args.get("since", "").strip() or "1d"
        if args["id"]:
            pages.checked_id(args["id"])
        try:
            since = report.parse_since(since_text)
        except configmod.BadValue:
            abort(400, "since is 1d, 12h... or YYYY-MM-DD")
        found, note = nodes.tracked_everywhere(
            current(),
            spool,
            cluster,
            since,
            args["sender"] or None,
            args["recipient"] or None,
            args["id"] or None,
        )
        for message in found:
            for event in message["events"]:
                event["detail"] = track.detail(event)
            message["quarantine"] = pages.still_quarantined(spool, message)
        return render_template(
            "track.html",
            messages=found[-200:],
            total=len(found),
            args=args,
            since=since_text,
            note=note,
        )

    # -------------------------------------------------------------- config and logs

    @app.get("/config")
    def config_check():
        try:
            configmod.load(current().path)
            problems = []
        except configmod.ConfigError as exc:
            problems = exc.problems
        return render_template("config.html", path=current().path, problems=problems)

    @app.get("/logs")
    def logs():
        queue_id = request.args.get("qid", "").strip()
        lines: list[str] = []
        if queue_id:
            pages.checked_id(queue_id)
            lines = pages.log_lines(logmod.file_for(current()), queue_id)
        return render_template("logs.html", qid=queue_id, lines=lines)

    if serve_metrics:

        @app.get("/metrics")
        def metrics():
            if not configmod.in_networks(request.remote_addr or "", current().metrics_allow):
                abort(403, "not in MetricsAllow")
            return pages.metrics_response(spool, current())

    return app


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the structured log, not werkzeug's own logger."""

    def log(self, type: str, message: str, *args) -> None:
        logmod.get().debug("http", client=self.address_string(), line=message % args)


def run(config: configmod.Config, snapshot: Path | None = None) -> int:
    """The console process: serve until SIGTERM; SIGHUP re-reads the configuration."""
    log = logmod.get()
    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # threads inherit: only sigwait takes them
    together = config.metrics_listen == config.admin_listen
    servers = []
    app = None
    if config.admin_listen:
        app = create_app(config, serve_metrics=together)
        host, port = config.admin_listen
        servers.append(make_server(host, port, app, threaded=True, request_handler=_QuietHandler))
        log.info("console_listening", address=f"{host}:{port}", metrics=together)
    if config.metrics_listen and not together:
        host, port = config.metrics_listen
        servers.append(
            make_server(
                host, port, pages.metrics_app(config), threaded=True, request_handler=_QuietHandler
            )
        )
        log.info("metrics_listening", address=f"{host}:{port}")
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    while True:
        signum = signal.sigwait(handled)
        if signum in (signal.SIGTERM, signal.SIGINT):
            break
        if signum == signal.SIGHUP:
            logmod.reopen()
            fresh = configmod.reload(config, snapshot, log)
            if fresh is not None and app is not None:
                config = fresh
                app.extensions["mailgate"]["config"] = fresh
                log.info("config_reloaded")
    for server in servers:
        server.shutdown()
    log.info("worker_stopped")
    return 0
