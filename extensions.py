"""Flask extensions, created once and bound to the app in create_app()."""

from pathlib import Path

from flask import session
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class ThreadlineLoginManager(LoginManager):
    """Flask-Login's, guarding only sessions someone signed in to.

    Its session protection also rewrote a session with nobody in it (the sign-in form's,
    holding the CSRF token). A request sent with that cookie and answered after the sign-in
    (the login page's icon, fetched while the form was being sent) then replaced the new
    session cookie with the old one, and the user was back at the sign-in page.
    """

    def _session_protection_failed(self) -> bool:
        if "_user_id" not in session:
            return False  # nobody to protect; leave the cookie alone
        return super()._session_protection_failed()


db = SQLAlchemy(model_class=Base)
login_manager = ThreadlineLoginManager()
csrf = CSRFProtect()
# The migrations folder sits beside this file, whatever the working directory.
migrate = Migrate(directory=str(Path(__file__).parent / "migrations"))
htmx = Htmx()
