"""One blueprint per area. BLUEPRINTS is the list app.py registers, in URL-table order."""

from views import (
    admin,
    auth,
    blocking,
    conversations,
    deals,
    health,
    leads,
    organizations,
    persons,
    projects,
    settings,
)

BLUEPRINTS = [
    auth.bp,
    admin.bp,
    settings.bp,
    health.bp,
    deals.bp,
    persons.bp,
    organizations.bp,
    leads.bp,
    projects.bp,
    conversations.bp,
    blocking.bp,
]

# The areas holding CRM records; the visibility test walks every id-taking route of these.
RECORD_BLUEPRINTS = ("deals", "persons", "organizations", "leads", "projects")
