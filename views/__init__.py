"""One blueprint per area. BLUEPRINTS is the list app.py registers, in URL-table order."""

from views import accounts, admin, auth, health, mail, records_placeholder, settings

BLUEPRINTS = [
    auth.bp,
    admin.bp,
    settings.bp,
    accounts.bp,
    mail.bp,
    health.bp,
    records_placeholder.bp,
]
