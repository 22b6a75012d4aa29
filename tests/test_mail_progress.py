"""The inbox header shows backfill progress while a sync runs, and stops polling after."""

from extensions import db
from models import MailFolder


def test_progress_bar_polls_while_backfilling_then_goes_quiet(
    make_user, login, make_stored_account
):
    user = make_user()
    account = make_stored_account(user)
    folder = MailFolder(
        account_id=account.id, name="INBOX", role="inbox", backfill_total=10, backfill_done=3
    )
    db.session.add(folder)
    db.session.commit()
    client = login(user)
    assert 'hx-get="/mail/progress"' in client.get("/mail/").get_data(as_text=True)
    busy = client.get("/mail/progress?done=0", headers={"HX-Request": "true"})
    body = busy.get_data(as_text=True)
    assert "Syncing: 3 of 10 messages" in body and 'hx-trigger="every 2s"' in body
    assert busy.headers["HX-Trigger"] == "mail-changed"  # new mail since the last poll
    same = client.get("/mail/progress?done=3", headers={"HX-Request": "true"})
    assert "HX-Trigger" not in same.headers
    folder.backfill_done = 10
    account.last_success_at = account.created_at
    db.session.commit()
    done = client.get("/mail/progress?done=3", headers={"HX-Request": "true"})
    assert "every 2s" not in done.get_data(as_text=True)
