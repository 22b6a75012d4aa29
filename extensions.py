"""Flask extensions, created once and bound to the app in create_app()."""

from pathlib import Path

from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()
csrf = CSRFProtect()
# The migrations folder sits beside this file, whatever the working directory.
migrate = Migrate(directory=str(Path(__file__).parent / "migrations"))
htmx = Htmx()
