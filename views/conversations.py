"""PLACEHOLDER for the conversation view; the `conversation` branch replaces this file.

It exists so the Mail tab can link rows to `conversations.show`. It shows header fields
and snippets only (escaped), never mail HTML.
"""

from flask import Blueprint, render_template
from flask_login import current_user
from sqlalchemy import select

from extensions import db
from models import Message
from services import access

bp = Blueprint("conversations", __name__, url_prefix="/mail/threads")


@bp.get("/<int:thread_id>")
def show(thread_id: int):
    thread, _is_owner = access.thread_for_viewer(current_user, thread_id)
    messages = db.session.scalars(
        select(Message)
        .where(
            Message.thread_id == thread.id,
            Message.deleted_at.is_(None),
            Message.blocked.is_(False),
        )
        .order_by(Message.date, Message.id)
    ).all()
    return render_template("conversations/page.html", thread=thread, messages=messages)
