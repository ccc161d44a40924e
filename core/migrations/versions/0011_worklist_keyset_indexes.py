"""studies: report_signed, and the worklist's order as partial expression indexes

The reading worklist sorts by (not STAT, not AI-critical, due time, id) and its default
view keeps the unsigned studies.  With a year of studies (100,000) both were computed
over the whole table for every page: the order on no index, "unsigned" as an anti-join
with every report.  ``report_signed`` mirrors the study report's signed state (kept by
``core.models.report`` on every flush; filled here from the reports), and four partial
indexes hold the order itself, for all sites and per site, for the whole list and for
the unsigned studies only.  The expressions are spelled exactly as
``core.models.study.worklist_order`` renders them on each database: an expression index
serves only a query that spells the same expression.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (  # name, by site, unsigned only
    ('ix_studies_worklist_all', False, False),
    ('ix_studies_worklist_all_site', True, False),
    ('ix_studies_worklist_open', False, True),
    ('ix_studies_worklist_open_site', True, True),
)


def upgrade() -> None:
    # A literal default: SQLite then adds the column in place (ALTER TABLE ADD COLUMN);
    # an expression would make the batch copy the table, which the foreign keys of
    # existing reports, jobs and instances refuse.
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_signed', sa.Boolean(), nullable=False,
                                      server_default='0'))
    op.execute("UPDATE studies SET report_signed = true WHERE EXISTS ("
               "SELECT 1 FROM reports WHERE reports.study_id = studies.id "
               "AND reports.subject_type = 'study' AND reports.state IN ('final', 'amended'))")
    postgres = op.get_bind().dialect.name == 'postgresql'
    # SQLAlchemy writes NOT on a boolean as "NOT x" on PostgreSQL and "x = 0" on SQLite.
    not_critical = '(NOT ai_critical)' if postgres else '(ai_critical = 0)'
    unsigned = 'NOT report_signed' if postgres else 'report_signed = 0'
    order = [sa.text('(priority < 9)'), sa.text(not_critical),
             sa.text('coalesce(due_at, completed_at, first_received_at)'), sa.text('id')]
    ready = "state IN ('complete', 'reopened')"
    for name, by_site, open_only in INDEXES:
        where = sa.text(f'{ready} AND {unsigned}' if open_only else ready)
        op.create_index(name, 'studies', [sa.text('site_id'), *order] if by_site else order,
                        unique=False, postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    for name, _, _ in reversed(INDEXES):
        op.drop_index(name, table_name='studies')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('report_signed')
