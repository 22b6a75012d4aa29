"""One blueprint per area. BLUEPRINTS is the list app.py registers, in URL-table order."""

from views import admin, auth, conversations, health, mail, records_placeholder, settings

BLUEPRINTS = [
    auth.bp,
    admin.bp,
    settings.bp,
    health.bp,
    mail.bp,
    conversations.bp,
    records_placeholder.bp,
]
