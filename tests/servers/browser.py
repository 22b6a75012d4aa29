"""Real Chromium (Debian's package) driven by Playwright, and the app served in a thread."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass

from flask import Flask
from werkzeug.serving import make_server

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class LiveServer:
    app: Flask
    url: str


class ServerThread(threading.Thread):
    """Serve a Flask app on a free loopback port until stop() is called."""

    def __init__(self, app: Flask) -> None:
        super().__init__(daemon=True)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.join(timeout=5)


# Elements htmx marks while a request or swap is in flight (htmx.config: requestClass,
# swappingClass, settlingClass, addedClass). Swapped-in content gets its hx-* listeners only
# when the settle step ends (settleDelay, a timer), so a test that types or clicks in it
# earlier is ignored by htmx: wait for this state first.
HTMX_BUSY = ".htmx-request, .htmx-swapping, .htmx-settling, .htmx-added"


def sign_in_with_session(page, app: Flask, base_url: str, user) -> None:
    """Sign the page's browser in as `user` with a session cookie (no login form).

    Sign-in through the form is covered where it matters (setup, flow A, accounts).
    """
    from tests.conftest import signed_in_client  # late: conftest loads this module

    client = signed_in_client(app, user, user_agent=page.evaluate("navigator.userAgent"))
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base_url}])
    page.goto(base_url + "/")  # where the form leaves the user
    page.locator(".whoami").wait_for()


def sign_in_with_form(page, base_url: str, email: str, password: str) -> None:
    """Sign in through the login form and wait until the signed-in page shows."""
    page.goto(base_url + "/login")
    page.fill("#f-email", email)
    page.fill("#f-password", password)
    page.click("button[type=submit]")
    # The click only starts the POST: going on at once raced the session cookie.
    page.locator(".whoami").wait_for()


def wait_for_htmx_settled(page) -> None:
    """Wait until htmx has no request, swap or settle in flight on `page`."""
    page.wait_for_function(f"() => !document.querySelector({HTMX_BUSY!r})")
