"""Baseline: the whole schema of the first migrated release.

Every table, column, server default and index of the models as they were when migrations
began, written out here so later model changes do not change what this revision builds.
A database made by an earlier release (no alembic_version) is brought to this revision by
legacy_schema.py and stamped, not built by it.

Revision ID: 0001
Revises:
Create Date: 2026-12-06 02:37:34.390605
"""

import sqlalchemy as sa
from alembic import op

from services.search import ensure_search_index

# revision identifiers, used by Alembic.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table of this revision, each after the tables it references.
TABLES = (
    "login_failure",
    "user",
    "blocked_address",
    "connection_test",
    "image_allowance",
    "mail_account",
    "organization",
    "preference",
    "setup_claim",
    "mail_folder",
    "person",
    "sync_lease",
    "sync_run",
    "deal",
    "failed_uid",
    "person_email",
    "project",
    "lead",
    "thread",
    "message",
    "message_id_index",
    "message_location",
    "message_person",
)


def upgrade():
    op.create_table(
        "login_failure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=20), server_default="login", nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_failure_created_at", "login_failure", ["created_at"], unique=False)
    op.create_index("ix_login_failure_device", "login_failure", ["device"], unique=False)
    op.create_index("ix_login_failure_email", "login_failure", ["email"], unique=False)
    op.create_index("ix_login_failure_ip", "login_failure", ["ip"], unique=False)

    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("is_deactivated", sa.Boolean(), nullable=False),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "blocked_address",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("entry", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "entry"),
    )
    op.create_index("ix_blocked_address_user_id", "blocked_address", ["user_id"], unique=False)

    op.create_table(
        "connection_test",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_connection_test_created_at", "connection_test", ["created_at"], unique=False
    )
    op.create_index("ix_connection_test_user_id", "connection_test", ["user_id"], unique=False)

    op.create_table(
        "image_allowance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "sender"),
    )
    op.create_index("ix_image_allowance_user_id", "image_allowance", ["user_id"], unique=False)

    op.create_table(
        "mail_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("email_address", sa.String(length=320), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=320), nullable=False),
        sa.Column("password_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("imap_host", sa.String(length=255), nullable=False),
        sa.Column("imap_port", sa.Integer(), nullable=False),
        sa.Column("imap_security", sa.String(length=10), nullable=False),
        sa.Column("smtp_host", sa.String(length=255), nullable=True),
        sa.Column("smtp_port", sa.Integer(), nullable=True),
        sa.Column("smtp_security", sa.String(length=10), nullable=True),
        sa.Column("ca_cert_pem", sa.Text(), nullable=True),
        sa.Column("folder_mode", sa.String(length=10), nullable=False),
        sa.Column("chosen_folders", sa.JSON(), nullable=False),
        sa.Column("since", sa.String(length=5), nullable=False),
        sa.Column("sync_state", sa.String(length=30), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.Column("parse_version", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "email_address"),
    )
    op.create_index("ix_mail_account_removed_at", "mail_account", ["removed_at"], unique=False)
    op.create_index("ix_mail_account_sync_state", "mail_account", ["sync_state"], unique=False)
    op.create_index("ix_mail_account_user_id", "mail_account", ["user_id"], unique=False)

    op.create_table(
        "organization",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_organization_domain", "organization", ["domain"], unique=False)
    op.create_index("ix_organization_name", "organization", ["name"], unique=False)
    op.create_index("ix_organization_owner_id", "organization", ["owner_id"], unique=False)
    op.create_index("ix_organization_updated_at", "organization", ["updated_at"], unique=False)
    op.create_index("ix_organization_visibility", "organization", ["visibility"], unique=False)

    op.create_table(
        "preference",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "key"),
    )
    op.create_index("ix_preference_user_id", "preference", ["user_id"], unique=False)

    op.create_table(
        "setup_claim",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "mail_folder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("delimiter", sa.String(length=5), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("sync_enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("uidnext", sa.BigInteger(), nullable=True),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_uid", sa.BigInteger(), nullable=False),
        sa.Column("initial_sync_complete", sa.Boolean(), nullable=False),
        sa.Column("server_message_count", sa.Integer(), nullable=True),
        sa.Column("backfill_total", sa.Integer(), nullable=False),
        sa.Column("backfill_done", sa.Integer(), nullable=False),
        sa.Column("uidinvalid_streak", sa.Integer(), nullable=False),
        sa.Column("last_full_flag_scan_at", sa.DateTime(), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(), nullable=True),
        sa.Column("server_not_stored", sa.Integer(), nullable=True),
        sa.Column("identity_checked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_index("ix_mail_folder_account_id", "mail_folder", ["account_id"], unique=False)
    op.create_index("ix_mail_folder_role", "mail_folder", ["role"], unique=False)

    op.create_table(
        "person",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("phone", sa.String(length=50), nullable=True),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_person_name", "person", ["name"], unique=False)
    op.create_index("ix_person_organization_id", "person", ["organization_id"], unique=False)
    op.create_index("ix_person_owner_id", "person", ["owner_id"], unique=False)
    op.create_index("ix_person_updated_at", "person", ["updated_at"], unique=False)
    op.create_index("ix_person_visibility", "person", ["visibility"], unique=False)

    op.create_table(
        "sync_lease",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "sync_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("new_count", sa.Integer(), nullable=False),
        sa.Column("changed_count", sa.Integer(), nullable=False),
        sa.Column("deleted_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sync_run_account_id", "sync_run", ["account_id"], unique=False)

    op.create_table(
        "deal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("stage", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("expected_close_date", sa.Date(), nullable=True),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deal_organization_id", "deal", ["organization_id"], unique=False)
    op.create_index("ix_deal_owner_id", "deal", ["owner_id"], unique=False)
    op.create_index("ix_deal_person_id", "deal", ["person_id"], unique=False)
    op.create_index("ix_deal_stage", "deal", ["stage"], unique=False)
    op.create_index("ix_deal_status", "deal", ["status"], unique=False)
    op.create_index("ix_deal_title", "deal", ["title"], unique=False)
    op.create_index("ix_deal_updated_at", "deal", ["updated_at"], unique=False)
    op.create_index("ix_deal_visibility", "deal", ["visibility"], unique=False)

    op.create_table(
        "failed_uid",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["folder_id"], ["mail_folder.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "uid"),
    )
    op.create_index("ix_failed_uid_folder_id", "failed_uid", ["folder_id"], unique=False)

    op.create_table(
        "person_email",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_index("ix_person_email_person_id", "person_email", ["person_id"], unique=False)

    op.create_table(
        "project",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_project_organization_id", "project", ["organization_id"], unique=False)
    op.create_index("ix_project_owner_id", "project", ["owner_id"], unique=False)
    op.create_index("ix_project_person_id", "project", ["person_id"], unique=False)
    op.create_index("ix_project_status", "project", ["status"], unique=False)
    op.create_index("ix_project_title", "project", ["title"], unique=False)
    op.create_index("ix_project_updated_at", "project", ["updated_at"], unique=False)
    op.create_index("ix_project_visibility", "project", ["visibility"], unique=False)

    op.create_table(
        "lead",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("deal_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["deal_id"], ["deal.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lead_organization_id", "lead", ["organization_id"], unique=False)
    op.create_index("ix_lead_owner_id", "lead", ["owner_id"], unique=False)
    op.create_index("ix_lead_person_id", "lead", ["person_id"], unique=False)
    op.create_index("ix_lead_status", "lead", ["status"], unique=False)
    op.create_index("ix_lead_title", "lead", ["title"], unique=False)
    op.create_index("ix_lead_updated_at", "lead", ["updated_at"], unique=False)
    op.create_index("ix_lead_visibility", "lead", ["visibility"], unique=False)

    op.create_table(
        "thread",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("gm_thrid", sa.BigInteger(), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("normalized_subject", sa.String(length=255), nullable=False),
        sa.Column("first_date", sa.DateTime(), nullable=True),
        sa.Column("last_date", sa.DateTime(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("in_inbox", sa.Boolean(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.Column("deal_id", sa.Integer(), nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("needs_link_choice", sa.Boolean(), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("reply_later", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("emptied_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["deal_id"], ["deal.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_thread_account_id", "thread", ["account_id"], unique=False)
    op.create_index(
        "ix_thread_account_last_date", "thread", ["account_id", "last_date", "id"], unique=False
    )
    op.create_index(
        "ix_thread_archive_list",
        "thread",
        ["account_id", "last_date", "id"],
        unique=False,
        sqlite_where=sa.text("archived IS 1 AND deleted_at IS NULL"),
        postgresql_where=sa.text("archived IS true AND deleted_at IS NULL"),
    )
    op.create_index("ix_thread_archived", "thread", ["archived"], unique=False)
    op.create_index("ix_thread_blocked", "thread", ["blocked"], unique=False)
    op.create_index("ix_thread_deal_id", "thread", ["deal_id"], unique=False)
    op.create_index("ix_thread_deleted_at", "thread", ["deleted_at"], unique=False)
    op.create_index("ix_thread_emptied_at", "thread", ["emptied_at"], unique=False)
    op.create_index("ix_thread_gm_thrid", "thread", ["gm_thrid"], unique=False)
    op.create_index(
        "ix_thread_inbox",
        "thread",
        ["account_id", "last_date", "id"],
        unique=False,
        sqlite_where=sa.text("in_inbox IS 1 AND archived IS 0 AND deleted_at IS NULL"),
        postgresql_where=sa.text("in_inbox IS true AND archived IS false AND deleted_at IS NULL"),
    )
    op.create_index("ix_thread_last_date", "thread", ["last_date"], unique=False)
    op.create_index("ix_thread_lead_id", "thread", ["lead_id"], unique=False)
    op.create_index("ix_thread_normalized_subject", "thread", ["normalized_subject"], unique=False)
    op.create_index("ix_thread_project_id", "thread", ["project_id"], unique=False)
    op.create_index(
        "ix_thread_reply_later",
        "thread",
        ["account_id", "last_date", "id"],
        unique=False,
        sqlite_where=sa.text("reply_later IS 1 AND deleted_at IS NULL"),
        postgresql_where=sa.text("reply_later IS true AND deleted_at IS NULL"),
    )

    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=True),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("header_key", sa.String(length=64), nullable=True),
        sa.Column("gm_msgid", sa.BigInteger(), nullable=True),
        sa.Column("message_id_header", sa.String(length=998), nullable=True),
        sa.Column("in_reply_to", sa.String(length=998), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("from_name", sa.String(length=255), nullable=False),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("to", sa.JSON(), nullable=False),
        sa.Column("cc", sa.JSON(), nullable=False),
        sa.Column("bcc", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.JSON(), nullable=False),
        sa.Column("date", sa.DateTime(), nullable=True),
        sa.Column("internaldate", sa.DateTime(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw_sha256", sa.String(length=64), nullable=True),
        sa.Column("is_placeholder", sa.Boolean(), nullable=False),
        sa.Column("snippet", sa.String(length=300), nullable=False),
        sa.Column("has_attachments", sa.Boolean(), nullable=False),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.Column("is_read", sa.Boolean(), nullable=False),
        sa.Column("is_flagged", sa.Boolean(), nullable=False),
        sa.Column("is_draft", sa.Boolean(), nullable=False),
        sa.Column("is_sent", sa.Boolean(), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.Column("user_deleted_at", sa.DateTime(), nullable=True),
        sa.Column("orphaned_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["thread_id"], ["thread.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "dedup_key"),
    )
    op.create_index("ix_message_account_date", "message", ["account_id", "date"], unique=False)
    op.create_index(
        "ix_message_account_header_key", "message", ["account_id", "header_key"], unique=False
    )
    op.create_index("ix_message_account_id", "message", ["account_id"], unique=False)
    op.create_index("ix_message_deleted_at", "message", ["deleted_at"], unique=False)
    op.create_index("ix_message_from_address", "message", ["from_address"], unique=False)
    op.create_index("ix_message_gm_msgid", "message", ["gm_msgid"], unique=False)
    op.create_index("ix_message_message_id_header", "message", ["message_id_header"], unique=False)
    op.create_index("ix_message_raw_sha256", "message", ["raw_sha256"], unique=False)
    op.create_index("ix_message_thread_id", "message", ["thread_id"], unique=False)
    op.create_index("ix_message_thread_read", "message", ["thread_id", "is_read"], unique=False)
    op.create_index(
        "ix_message_unread",
        "message",
        ["account_id", "thread_id", "is_read", "deleted_at", "blocked"],
        unique=False,
        sqlite_where=sa.text("is_read IS 0 AND deleted_at IS NULL AND blocked IS 0"),
        postgresql_where=sa.text("is_read IS false AND deleted_at IS NULL AND blocked IS false"),
    )

    op.create_table(
        "message_id_index",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("msgid", sa.String(length=998), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("is_phantom", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["mail_account.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["thread_id"], ["thread.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "msgid"),
    )
    op.create_index(
        "ix_message_id_index_account_id", "message_id_index", ["account_id"], unique=False
    )
    op.create_index(
        "ix_message_id_index_thread_id", "message_id_index", ["thread_id"], unique=False
    )

    op.create_table(
        "message_location",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("seen", sa.Boolean(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=False),
        sa.Column("draft", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("gm_labels", sa.JSON(), nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("seen_changed_at", sa.DateTime(), nullable=True),
        sa.Column("seen_pending", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["folder_id"], ["mail_folder.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "uid"),
    )
    op.create_index(
        "ix_message_location_folder",
        "message_location",
        ["folder_id", "deleted", "message_id"],
        unique=False,
    )
    op.create_index(
        "ix_message_location_guarded",
        "message_location",
        ["folder_id", "uid"],
        unique=False,
        sqlite_where=sa.text("seen_changed_at IS NOT NULL OR seen_pending IS 1"),
        postgresql_where=sa.text("seen_changed_at IS NOT NULL OR seen_pending IS true"),
    )
    op.create_index(
        "ix_message_location_message",
        "message_location",
        ["message_id", "folder_id", "deleted"],
        unique=False,
    )

    op.create_table(
        "message_person",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "person_id"),
    )
    op.create_index("ix_message_person_message_id", "message_person", ["message_id"], unique=False)
    op.create_index("ix_message_person_person_id", "message_person", ["person_id"], unique=False)

    # The search tables and triggers are not models: their one home is services/search.py.
    ensure_search_index(op.get_bind())


def downgrade():
    for name in ("thread_search", "thread_search_pending", "thread_search_stale", "message_text"):
        op.execute(f"DROP TABLE IF EXISTS {name}")
    for name in reversed(TABLES):
        op.drop_table(name)
