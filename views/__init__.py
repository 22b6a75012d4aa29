"""One blueprint per area. BLUEPRINTS is the list app.py registers, in URL-table order."""

from views import (
    accounts,
    admin,
    auth,
    blocking,
    compose,
    conversations,
    deals,
    group_send,
    health,
    leads,
    mail,
    mail_templates,
    organizations,
    persons,
    projects,
    settings,
    signatures,
)

BLUEPRINTS = [
    auth.bp,
    admin.bp,
    settings.bp,
    accounts.bp,
    signatures.bp,
    mail.bp,
    health.bp,
    conversations.bp,
    compose.bp,
    group_send.bp,
    deals.bp,
    persons.bp,
    organizations.bp,
    leads.bp,
    projects.bp,
    blocking.bp,
    mail_templates.bp,
]

# The areas holding CRM records; the visibility test walks every id-taking route of these.
RECORD_BLUEPRINTS = ("deals", "persons", "organizations", "leads", "projects")
